"""Synthetic Vript: procedurally rendered videos in the real Vript layout.

`generate(root, ...)` writes a small dataset that looks exactly like the
extracted Hugging Face `Mutonix/Vript` release (docs/vript.md, and the
fixture layout in `tests/fixtures/vript/annotations/`):

  vript_captions/vript_{long,short}_videos_captions/{video_id}_caption.json
  vript_captions/vript_{long,short}_videos_captions.jsonl
  vript_{long,short}_videos/{video_id}.mp4           (all scenes, back to back)
  vript_{long,short}_videos_clips/{video_id}/{video_id}-Scene-NNN.mp4
  vript_{long,short}_videos_clips/{video_id}/{video_id}_asr.jsonl
  vript_{long,short}_videos_clips/{video_id}/{video_id}_cut_meta.json
  synthetic_scenes.json     (not in Vript: what every clip really shows, as
                             returned by `plan_dataset`; `render_scene`
                             re-renders any clip from it)
  .complete                 (not in Vript: settings + summary; see below)

Every video has a theme (background colours, texture, setting nouns); every
scene (clip) shows 1-3 shapes (`SHAPES`, `COLOURS`, `SIZES`), each doing one
`ACTIONS` action, filmed by one `CAMERAS` move with a `SHOT_TYPES` shot type.
Frames are evaluated analytically: each pixel is mapped through the camera to
world coordinates where the texture and the shapes' signed distances are
evaluated, so edges are anti-aliased at every zoom and camera motion shows on
the background. Clips are H.264 (libx264, yuv420p) mp4 files written with PyAV.

Captions (Vript schema) are written from the scene description, so they are
truthful, with wording drawn from large synonym pools so that captions of
unrelated scenes share few nouns/verbs (low Vript-HAL against each other, 100
against themselves). About 40 % of the scenes have a voice-over: 1-3
Whisper-like ASR segments (some spans end after the clip); most of those
captions quote the narrator (so the official keyword rule picks the voice-over
formats), the others ('unmentioned') do not. Every video has an `_asr.jsonl`.

Determinism: everything is a function of the settings (`seed` included); the
mp4 bytes also need the same PyAV/FFmpeg/x264 build (x264 runs on one
thread). Videos are numbered long first, then short; video k does not depend
on how many videos follow it, except that `_ensure_voiceover_kinds` makes each
voice-over kind occur at least once.

`generate` is idempotent: a finished dataset holds a `.complete` marker with
its settings; the same settings return the recorded summary untouched, other
settings replace the dataset, and a non-empty folder without the marker is
refused. The dataset is built in a temporary sibling folder and renamed into
place, so `root` never holds a half-written one.

CLI: python -m vwt_jax.data.vript.synthetic --root DIR, plus `generate`'s
settings as flags (`--scenes_per_video MIN MAX`, ...).
"""

import argparse
import bisect
import json
import math
import os
import re
import shutil
import tempfile

import av
import numpy as np

from vwt_jax.core import files

FORMAT_VERSION = 1
LONG_GROUP = 'vript_long_videos'
SHORT_GROUP = 'vript_short_videos'
GROUPS = (LONG_GROUP, SHORT_GROUP)
SCENES_FILE = 'synthetic_scenes.json'
COMPLETE_FILE = '.complete'

SHAPES = ('disc', 'square', 'triangle', 'star', 'ring', 'diamond', 'cross', 'bar')
ACTIONS = ('move_left', 'move_right', 'move_up', 'move_down', 'bounce', 'grow', 'shrink',
           'appear', 'vanish', 'spin')
CAMERAS = ('static', 'pan_left', 'pan_right', 'tilt_up', 'tilt_down', 'zoom_in', 'zoom_out')
SHOT_TYPES = ('close_up', 'medium', 'wide')
SIZES = ('small', 'medium', 'large')
VOICEOVER_KINDS = ('none', 'mentioned', 'unmentioned')

# Object colours. A scene only uses colours far from both theme colours.
COLOURS = {
    'red': (220, 40, 40),
    'orange': (245, 140, 30),
    'yellow': (245, 220, 40),
    'green': (50, 180, 70),
    'cyan': (40, 210, 220),
    'blue': (50, 90, 230),
    'purple': (140, 60, 200),
    'pink': (245, 130, 190),
    'white': (245, 245, 245),
    'black': (20, 20, 20),
    'brown': (130, 80, 40),
}
_MIN_CONTRAST = 110.0

# Nouns a caption may use for each shape. They are pairwise distinct and never
# used for anything else, so a shape is mentioned iff one of its words occurs
# (`shape_pattern`).
SHAPE_WORDS = {
    'disc': ('disc', 'circle', 'orb', 'coin', 'puck'),
    'square': ('square', 'block', 'box', 'tile'),
    'triangle': ('triangle', 'wedge', 'arrowhead'),
    'star': ('star', 'pentagram', 'starburst'),
    'ring': ('ring', 'hoop', 'donut', 'halo'),
    'diamond': ('diamond', 'rhombus', 'lozenge'),
    'cross': ('cross', 'plus sign'),
    'bar': ('bar', 'rod', 'plank', 'stick', 'strip'),
}

# Verbs (third person) per action, and for moves the direction phrases; every
# direction phrase holds its direction word (`left`, `right`, `up`/`upward`,
# `down`/`downward`).
_SIDEWAYS_VERBS = ('glides', 'slides', 'drifts', 'travels', 'sweeps', 'scoots', 'cruises', 'coasts')
ACTION_VERBS = {
    'move_left': _SIDEWAYS_VERBS,
    'move_right': _SIDEWAYS_VERBS,
    'move_up': ('rises', 'climbs', 'ascends', 'floats', 'lifts'),
    'move_down': ('sinks', 'descends', 'drops', 'falls', 'slips'),
    'bounce': ('bounces', 'hops', 'bounds', 'jumps', 'leaps'),
    'grow': ('grows', 'swells', 'expands', 'enlarges', 'balloons', 'inflates'),
    'shrink': ('shrinks', 'contracts', 'dwindles', 'diminishes', 'deflates', 'shrivels'),
    'appear': ('appears', 'emerges', 'materializes', 'fades in', 'surfaces'),
    'vanish': ('vanishes', 'fades away', 'disappears', 'dissolves', 'evaporates'),
    'spin': ('spins', 'rotates', 'twirls', 'whirls', 'pivots', 'revolves'),
}
_DIRECTION_PHRASES = {
    'move_left': ('to the left', 'leftward', 'toward the left edge', 'over to the left'),
    'move_right': ('to the right', 'rightward', 'toward the right edge', 'over to the right'),
    'move_up': ('upward', 'up toward the top', 'straight up', 'up and away'),
    'move_down': ('downward', 'down toward the bottom', 'straight down', 'down and away'),
}
DIRECTION_WORDS = {
    'move_left': ('left', 'leftward'),
    'move_right': ('right', 'rightward'),
    'move_up': ('up', 'upward'),
    'move_down': ('down', 'downward'),
}

# The move action a camera motion would cancel on screen.
_CAMERA_FOLLOWS = {'pan_left': 'move_left', 'pan_right': 'move_right',
                   'tilt_up': 'move_up', 'tilt_down': 'move_down'}
_SIZE_RADIUS = {'small': (0.065, 0.085), 'medium': (0.12, 0.145), 'large': (0.2, 0.235)}
_SIZE_WORDS = {
    'small': ('small', 'tiny', 'little', 'petite', 'compact'),
    'medium': ('medium-sized', 'mid-sized', 'modest', 'moderate'),
    'large': ('large', 'big', 'huge', 'oversized', 'giant', 'massive'),
}
_NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five')

_TEXTURES = ('gradient', 'stripes', 'waves', 'dots', 'checker', 'grid', 'speckle', 'bricks')


def _theme(name, texture, colours, places, title):
  return {'name': name, 'texture': texture, 'colours': colours,
          'places': places, 'title': title}


# Each theme: background texture, two named background colours, setting nouns
# (none of them a shape word) and a title noun.
_THEMES = (
    _theme('lagoon', 'waves', (('teal', (30, 130, 140)), ('navy', (20, 40, 95))),
           ('lagoon', 'reef', 'tide pool', 'shoreline', 'seabed'), 'Lagoon'),
    _theme('desert', 'gradient', (('sandy', (215, 180, 120)), ('ochre', (190, 120, 50))),
           ('desert', 'dune', 'mirage', 'canyon', 'oasis'), 'Desert'),
    _theme('forest', 'dots', (('olive', (85, 110, 45)), ('moss', (45, 80, 40))),
           ('forest', 'thicket', 'canopy', 'fern grove', 'woodland'), 'Forest'),
    _theme('midnight', 'speckle', (('indigo', (30, 25, 80)), ('charcoal', (45, 45, 55))),
           ('night sky', 'galaxy', 'nebula', 'constellation', 'observatory'), 'Midnight'),
    _theme('candy', 'stripes', (('peach', (250, 200, 170)), ('lavender', (200, 170, 235))),
           ('candy shop', 'lollipop', 'gumball machine', 'confectionery', 'sweetshop'), 'Candy'),
    _theme('chalkboard', 'grid', (('slate', (55, 75, 65)), ('ash', (95, 110, 100))),
           ('chalkboard', 'classroom', 'lesson', 'school', 'lecture hall'), 'Classroom'),
    _theme('blueprint', 'grid', (('azure', (40, 90, 160)), ('steel', (80, 130, 190))),
           ('blueprint', 'schematic', 'drafting table', 'architecture studio', 'workshop'),
           'Blueprint'),
    _theme('sunset', 'gradient', (('coral', (240, 130, 90)), ('plum', (110, 50, 100))),
           ('sunset', 'horizon', 'twilight sky', 'beach at dusk', 'summer evening'), 'Sunset'),
    _theme('snowfield', 'dots', (('ivory', (235, 240, 245)), ('frost', (190, 215, 235))),
           ('snowfield', 'blizzard', 'winter morning', 'glacier', 'ski slope'), 'Snowfall'),
    _theme('volcano', 'speckle', (('maroon', (110, 25, 20)), ('soot', (40, 30, 30))),
           ('volcano', 'lava flow', 'magma chamber', 'crater', 'fire pit'), 'Volcano'),
    _theme('meadow', 'waves', (('lime', (170, 210, 110)), ('mint', (140, 200, 160))),
           ('meadow', 'pasture', 'clover patch', 'daisy field', 'prairie'), 'Meadow'),
    _theme('kitchen', 'checker', (('cream', (240, 230, 205)), ('sage', (150, 170, 140))),
           ('kitchen', 'countertop', 'bakery', 'pantry', 'cookbook'), 'Kitchen'),
    _theme('notebook', 'stripes', (('beige', (235, 225, 200)), ('khaki', (195, 185, 150))),
           ('notebook', 'ledger', 'journal', 'diary', 'sketchbook'), 'Notebook'),
    _theme('arcade', 'checker', (('magenta', (120, 20, 100)), ('jet', (15, 15, 30))),
           ('arcade', 'jukebox', 'nightclub', 'dance floor', 'pinball machine'), 'Arcade'),
    _theme('abyss', 'gradient', (('cobalt', (20, 50, 120)), ('inky', (10, 15, 40))),
           ('abyss', 'ocean floor', 'trench', 'submarine', 'shipwreck'), 'Deep Sea'),
    _theme('garden', 'bricks', (('terracotta', (180, 90, 60)), ('clay', (210, 150, 110))),
           ('garden', 'courtyard', 'patio', 'terrace', 'greenhouse'), 'Garden'),
    _theme('denim', 'stripes', (('denim', (60, 90, 140)), ('cornflower', (100, 140, 200))),
           ('tailor shop', 'sewing room', 'quilt', 'textile mill', 'wardrobe'), 'Fabric'),
    _theme('harbor', 'bricks', (('stone', (150, 150, 140)), ('mortar', (200, 200, 190))),
           ('harbor', 'quay', 'lighthouse', 'pier', 'wharf'), 'Harbor'),
)

_BACKDROP_NOUNS = ('backdrop', 'background', 'canvas', 'wallpaper', 'surface', 'scenery', 'panel',
                   'expanse')
_TEXTURE_PHRASES = {
    'gradient': ('fading smoothly between its two tones', 'washed in a soft gradient',
                 'blending gently from hue to hue'),
    'stripes': ('with bold slanted stripes', 'streaked by parallel bands',
                'lined with diagonal stripes'),
    'waves': ('rippling with wavy bands', 'with undulating ripples', 'patterned by gentle swells'),
    'dots': ('sprinkled with polka dots', 'spotted with round specks',
             'peppered with evenly spaced spots'),
    'checker': ('laid out in a checkered pattern', 'arranged like a chessboard',
                'with alternating checks'),
    'grid': ('ruled by thin grid lines', 'overlaid with a fine lattice',
             'mapped with a graph-paper mesh'),
    'speckle': ('flecked with grainy noise', 'mottled with tiny flecks',
                'dusted with scattered grains'),
    'bricks': ('patterned like a brick wall', 'laid in staggered bricks',
               'resembling rows of masonry'),
}
_SETTING_TEMPLATES = (
    'Against a {c0} {bg} {texture}, the setting recalls a {p0}.',
    'A {c0} and {c1} {bg} {texture} evokes a {p0} near a {p1}.',
    'The {bg} is {c0} and {c1}, {texture}, suggesting a {p0}.',
    'Everything unfolds over a {c0} {bg} {texture}, like a stylized {p0}.',
    'The {c0} {bg} {texture} brings a {p0} to mind.',
    'Picture a {p0} drawn as a {c0} {bg} {texture}, with hints of a {p1}.',
)
_OBJECT_TEMPLATES = (
    '{Obj} {verb} {comp}.',
    '{Region}, {obj} {verb} {comp}.',
    'Meanwhile, {obj} {verb} {comp}.',
    '{Obj} {verb} {comp} {manner}.',
)
_MANNERS = ('at a steady pace', 'without hurry', 'in one smooth motion',
            'with mechanical precision', 'almost lazily', 'quite briskly')
_REGION_PHRASES = {
    'center': ('In the middle', 'Right at the center', 'Near the midpoint'),
    'left': ('On the left', 'Near the left side', 'Toward the left margin'),
    'right': ('On the right', 'Near the right side', 'Toward the right margin'),
    'upper': ('Up high', 'Near the top', 'In the upper part'),
    'lower': ('Down low', 'Near the bottom', 'In the lower part'),
}
_ACTION_COMPLEMENTS = {
    'bounce': ('up and down {n} times', '{n} times in a row', 'repeatedly, {n} hops in all',
               'like a rubber ball, {n} times'),
    'grow': ('to almost twice its size', 'until it has nearly doubled',
             'steadily, ending almost twice as big'),
    'shrink': ('to about half its original scale', 'until it is half as big',
               'steadily, ending half as big'),
    'appear': ('out of nowhere', 'from thin air', 'gradually, from nothing'),
    'vanish': ('completely by the end', 'bit by bit until gone', 'into thin air'),
    'spin': ('{dir}, {turns}', '{turns}, turning {dir}', '{dir} {turns}'),
}
_TURN_WORDS = {1: ('once', 'one full turn', 'a single revolution'),
               2: ('twice', 'two full turns', 'two revolutions')}
_CAMERA_SENTENCES = {
    'static': ('The viewpoint stays fixed the whole time.', 'Nothing about the framing changes.',
               'The lens holds perfectly still.', 'The shot remains locked off.',
               'The perspective never wavers.'),
    'pan_left': ('The view pans to the left, so the {bg} scrolls past.',
                 'Slowly the camera swings left.', 'The framing travels leftward over the {bg}.',
                 'A gentle pan carries the view to the left.'),
    'pan_right': ('The view pans to the right, so the {bg} scrolls past.',
                  'Slowly the camera swings right.', 'The framing travels rightward over the {bg}.',
                  'A gentle pan carries the view to the right.'),
    'tilt_up': ('The shot tilts upward.', 'The viewpoint gradually lifts toward the top.',
                'A slow upward tilt reframes the picture.'),
    'tilt_down': ('The shot tilts downward.', 'The viewpoint gradually lowers toward the bottom.',
                  'A slow downward tilt reframes the picture.'),
    'zoom_in': ('The lens pushes in, enlarging everything in view.',
                'A steady zoom brings the action closer.', 'The camera zooms in gradually.',
                'Magnification increases as the optics push forward.'),
    'zoom_out': ('The lens pulls back to take in more of the surroundings.',
                 'A steady zoom reveals a wider area.', 'The camera zooms out gradually.',
                 'Magnification decreases as the optics retreat.'),
}
_CLOSING_SENTENCES = (
    'The atmosphere is calm and playful.',
    'Flat colors and crisp edges give it the look of a motion-graphics exercise.',
    'It resembles an illustration from a picture book.',
    'No people, text or logos are visible.',
    'The animation feels minimalist and tidy.',
    'Lighting is even, without shadows or reflections.',
    'The composition is simple, almost like a toy model.',
    'Soft tones keep things relaxed.',
    'Its clean geometry suits a screensaver or a teaching demo.',
)
_MENTION_TEMPLATES = (
    'A narrator says, "{text}"',
    'In a voice-over, someone remarks, "{text}"',
    'An off-screen speaker comments, "{text}"',
    'A cheerful voice says, "{text}"',
    'The host can be heard talking: "{text}"',
    'Narration accompanies the motion: "{text}"',
)
_SPEECH_OPENERS = (
    ' Check out this {colour} {shape}.',
    ' Keep your eyes on that {colour} {shape}.',
    ' Meet the {colour} {shape}.',
    ' Okay, this one is a {colour} {shape}.',
    ' Notice the {colour} {shape}?',
    ' And now, a {colour} {shape}.',
)
_SPEECH_ACTIONS = {
    'move_left': (' It is heading over to the left.', ' There it goes, off to the left.'),
    'move_right': (' It is heading over to the right.', ' There it goes, off to the right.'),
    'move_up': (' Up, up, up it goes.', ' Now it is floating upward.'),
    'move_down': (' And down it goes.', ' It keeps sinking lower.'),
    'bounce': (' Boing, boing, there it goes.', ' Look at it bounce.'),
    'grow': (' Watch it get bigger and bigger.', ' It keeps growing.'),
    'shrink': (' Now it is getting smaller.', ' It keeps shrinking.'),
    'appear': (' Oh, where did that pop out from?', ' And suddenly, there it is.'),
    'vanish': (' And just like that, it is gone.', ' Now you see it, now you do not.'),
    'spin': (' Round and round it goes.', ' Look at it spin.'),
}
_SPEECH_EXTRAS = (' Pretty relaxing, right?', ' Let us keep watching.',
                  ' This part is my favorite.', ' Simple, but I love it.',
                  ' Stay with me for the next one.')
_SHOT_PHRASES = {
    'close_up': 'Close-up of a {size} {colour} {shape} filling much of the frame, {c0} background.',
    'medium': 'Medium shot of {count} on a {c0} background.',
    'wide': 'Wide shot showing {count} spread across a {c0} background.',
}
_CAMERA_PHRASES = {
    'static': 'Static camera, no movement.',
    'pan_left': 'Camera pans slowly to the left.',
    'pan_right': 'Camera pans slowly to the right.',
    'tilt_up': 'Camera tilts slowly upward.',
    'tilt_down': 'Camera tilts slowly downward.',
    'zoom_in': 'Slow zoom in toward the center of the frame.',
    'zoom_out': 'Slow zoom out from the center of the frame.',
}
_TITLE_VERBS = {
    'move_left': 'Drifts Left', 'move_right': 'Drifts Right', 'move_up': 'Rises',
    'move_down': 'Sinks', 'bounce': 'Bounces', 'grow': 'Grows', 'shrink': 'Shrinks',
    'appear': 'Appears', 'vanish': 'Vanishes', 'spin': 'Spins',
}
_LONG_TITLES = ('{Theme} Shapes - Relaxing Geometric Animation', 'Floating Shapes: {Theme} Edition',
                'Calm Geometry over the {Theme}', 'Shapes in Motion | {Theme} Ambience')
_SHORT_TITLES = ('wait for the {shape} #shapes #satisfying', '{theme} shapes #animation #fyp',
                 'so satisfying {theme} edition #shorts')

# YouTube ids: 11 characters of the URL-safe base64 alphabet; the last one
# carries only 4 of its 6 bits, so it is one of 16 characters.
_ID_ALPHABET = ('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
                '0123456789-_')
_ID_LAST = 'AEIMQUYcgkosw048'

# Separate random streams so each part stays fixed when another part changes.
_STREAM_IDS, _STREAM_THEMES, _STREAM_PLAN, _STREAM_TEXT = 1, 2, 3, 4
_FRAME_CHUNK_PIXELS = 1 << 18
_DIGITS = 4


def shape_pattern(shape):
  """Regex matching any caption noun of `shape` (singular or plural)."""
  forms = []
  for word in SHAPE_WORDS[shape]:
    plural = word + ('es' if word.endswith(('s', 'x', 'sh', 'ch')) else 's')
    forms += [re.escape(plural), re.escape(word)]
  return re.compile(rf'\b(?:{"|".join(forms)})\b', re.IGNORECASE)


def _r(value):
  return round(float(value), _DIGITS)


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def _video_ids(seed, count):
  rng = np.random.default_rng((seed, _STREAM_IDS))
  ids = []
  while len(ids) < count:
    body = ''.join(_ID_ALPHABET[i] for i in rng.integers(64, size=10))
    candidate = body + _ID_LAST[int(rng.integers(16))]
    if candidate not in ids:
      ids.append(candidate)
  return ids


def _theme_order(seed, count):
  # Cycling through a seeded permutation keeps themes distinct within a
  # dataset until all are used.
  perm = np.random.default_rng((seed, _STREAM_THEMES)).permutation(len(_THEMES))
  return [int(perm[i % len(_THEMES)]) for i in range(count)]


def _plan_theme(index, rng):
  theme = _THEMES[index]
  return {'name': theme['name'], 'texture': theme['texture'],
          'colours': [[name, list(rgb)] for name, rgb in theme['colours']],
          'period': _r(rng.uniform(0.12, 0.22)), 'angle': _r(rng.uniform(0, math.pi))}


def _object_colours(theme):
  """Object colours that contrast with both background colours."""
  backgrounds = [np.array(rgb, np.float64) for _, rgb in theme['colours']]
  return [name for name, rgb in COLOURS.items()
          if min(np.linalg.norm(np.array(rgb) - b) for b in backgrounds)
          >= _MIN_CONTRAST]


def _plan_object(rng, shape, colour, size, action, centre):
  radius = rng.uniform(*_SIZE_RADIUS[size])
  x, y = centre
  start = {'x': x, 'y': y, 'scale': 1.0, 'angle': 0.0, 'opacity': 1.0}
  if shape in ('triangle', 'star', 'cross', 'bar', 'square', 'diamond'):
    start['angle'] = rng.uniform(-0.3, 0.3)
  end = dict(start)
  ramp = [0.0, 1.0]
  extra = {}
  distance = 0.18 if size == 'large' else 0.3
  margin = 0.2
  if action == 'move_left':
    start['x'] = max(x, margin + distance)
    end['x'] = start['x'] - distance
  elif action == 'move_right':
    start['x'] = min(x, 1 - margin - distance)
    end['x'] = start['x'] + distance
  elif action == 'move_up':
    start['y'] = min(y, 1 - margin - distance)
    end['y'] = start['y'] - distance
  elif action == 'move_down':
    start['y'] = max(y, margin + distance)
    end['y'] = start['y'] + distance
  elif action == 'bounce':
    height = 0.12 if size == 'large' else 0.18
    start['y'] = end['y'] = max(y, margin + height)
    extra = {'bounces': int(rng.integers(2, 5)), 'bounce_height': height}
  elif action == 'grow':
    start['scale'] = 0.55 if size == 'large' else 1.0
    end['scale'] = start['scale'] * 1.8
  elif action == 'shrink':
    end['scale'] = 0.5
  elif action == 'appear':
    start['opacity'] = 0.0
    ramp = [0.0, _r(rng.uniform(0.35, 0.6))]
  elif action == 'vanish':
    end['opacity'] = 0.0
    ramp = [_r(rng.uniform(0.4, 0.65)), 1.0]
  elif action == 'spin':
    turns = int(rng.integers(1, 3))
    clockwise = bool(rng.integers(2))
    # Image rows grow downwards, so a growing angle turns clockwise on screen.
    sign = 1 if clockwise else -1
    end['angle'] = start['angle'] + sign * 2 * math.pi * turns
    extra = {'turns': turns, 'clockwise': clockwise}
  return {'shape': shape, 'colour': colour, 'rgb': list(COLOURS[colour]), 'size': size,
          'radius': _r(radius), 'action': action, 'start': {k: _r(v) for k, v in start.items()},
          'end': {k: _r(v) for k, v in end.items()}, 'ramp': ramp, **extra}


# Pan/tilt: the view-centre coordinate that moves, and +1 if it decreases.
_CAMERA_MOVES = {'pan_left': ('x', 1), 'pan_right': ('x', -1),
                 'tilt_up': ('y', 1), 'tilt_down': ('y', -1)}


def _plan_camera(rng, kind):
  centre = {'x': 0.5, 'y': 0.5, 'width': 1.0}
  start, end = dict(centre), dict(centre)
  shift = _r(rng.uniform(0.12, 0.18))
  if kind in _CAMERA_MOVES:
    key, sign = _CAMERA_MOVES[kind]
    start[key], end[key] = 0.5 + sign * shift, 0.5 - sign * shift
  elif kind in ('zoom_in', 'zoom_out'):
    start['width'], end['width'] = (1.2, 0.8) if kind == 'zoom_in' else (0.8, 1.2)
  return {'kind': kind, 'start': {k: _r(v) for k, v in start.items()},
          'end': {k: _r(v) for k, v in end.items()}}


def _plan_scene(rng, theme):
  shot = _pick(rng, SHOT_TYPES)
  if shot == 'close_up':
    sizes = ['large']
  elif shot == 'medium':
    sizes = ['medium'] + [_pick(rng, ('small', 'medium')) for _ in range(int(rng.integers(2)))]
  else:
    sizes = ['small'] * int(rng.integers(2, 4))
  shapes = rng.choice(len(SHAPES), size=len(sizes), replace=False)
  colours = _object_colours(theme)
  colour_ids = rng.choice(len(colours), size=len(sizes), replace=False)
  if shot == 'close_up':
    centres = [rng.uniform(0.45, 0.55, size=2)]
  else:
    cells = rng.choice(9, size=len(sizes), replace=False)
    centres = [np.array([0.28 + 0.22 * (c % 3), 0.28 + 0.22 * (c // 3)])
               + rng.uniform(-0.03, 0.03, size=2) for c in cells]
  camera = _plan_camera(rng, _pick(rng, CAMERAS))
  objects = []
  for size, shape_id, colour_id, centre in zip(sizes, shapes, colour_ids, centres):
    shape = SHAPES[int(shape_id)]
    # A spinning disc or ring looks still, and a shape moving with a pan or
    # tilt stays put on screen, so neither would match its caption.
    actions = [a for a in ACTIONS
               if not (a == 'spin' and shape in ('disc', 'ring'))
               and a != _CAMERA_FOLLOWS.get(camera['kind'])]
    objects.append(_plan_object(rng, shape, colours[int(colour_id)], size, _pick(rng, actions),
                                centre))
  # 60 % none, 30 % mentioned, 10 % unmentioned.
  voiceover = VOICEOVER_KINDS[bisect.bisect((0.6, 0.9), rng.uniform())]
  return {'shot_type': shot, 'camera': camera, 'objects': objects, 'voiceover': voiceover}


def _ensure_voiceover_kinds(videos):
  """Makes every voice-over kind occur once if there are enough clips."""
  scenes = [s for v in videos for s in v['scenes']]
  if len(scenes) < len(VOICEOVER_KINDS):
    return
  for kind in VOICEOVER_KINDS:
    counts = {k: sum(s['voiceover'] == k for s in scenes) for k in VOICEOVER_KINDS}
    if counts[kind]:
      continue
    donor = max(VOICEOVER_KINDS, key=lambda k: counts[k])
    next(s for s in reversed(scenes) if s['voiceover'] == donor)['voiceover'] = kind


def _count_phrase(objects):
  names = [f'{o["colour"]} {o["shape"]}' for o in objects]
  if len(names) == 1:
    return f'a single {names[0]}'
  return f'{_NUMBER_WORDS[len(names)]} shapes (' + ', '.join(names[:-1]) + f' and {names[-1]})'


def _screen_region(obj, camera):
  x = (obj['start']['x'] - camera['start']['x']) / camera['start']['width']
  y = (obj['start']['y'] - camera['start']['y']) / camera['start']['width']
  if abs(x) <= abs(y) and abs(y) > 0.1:
    return 'upper' if y < 0 else 'lower'
  if abs(x) > 0.1:
    return 'left' if x < 0 else 'right'
  return 'center'


def _capitalise(text):
  return text[0].upper() + text[1:]


def _title_case(text):
  return ' '.join(w if w in ('at', 'of') else _capitalise(w) for w in text.split())


def _fix_articles(text):
  # Templates always write 'a'; no word of the vocabulary that starts with a
  # vowel letter is pronounced with a consonant sound.
  return re.sub(r'\b([Aa]) (?=[aeiouAEIOU])', r'\1n ', text)


def _object_sentence(rng, obj, camera, first):
  shape_word = _pick(rng, SHAPE_WORDS[obj['shape']])
  size_word = _pick(rng, _SIZE_WORDS[obj['size']])
  noun = f'a {size_word} {obj["colour"]} {shape_word}'
  action = obj['action']
  verb = _pick(rng, ACTION_VERBS[action])
  if action in _DIRECTION_PHRASES:
    comp = _pick(rng, _DIRECTION_PHRASES[action])
  elif action == 'bounce':
    comp = _pick(rng, _ACTION_COMPLEMENTS['bounce']).format(n=_NUMBER_WORDS[obj['bounces']])
  elif action == 'spin':
    comp = _pick(rng, _ACTION_COMPLEMENTS['spin']).format(
        dir='clockwise' if obj['clockwise'] else 'counterclockwise',
        turns=_pick(rng, _TURN_WORDS[obj['turns']]))
  else:
    comp = _pick(rng, _ACTION_COMPLEMENTS[action])
  # 'Meanwhile' only links a shape to one described before it.
  template = _pick(rng, [t for t in _OBJECT_TEMPLATES
                         if not (first and t.startswith('Meanwhile'))])
  region = _pick(rng, _REGION_PHRASES[_screen_region(obj, camera)])
  return template.format(Obj=_capitalise(noun), obj=noun, verb=verb, comp=comp,
                         manner=_pick(rng, _MANNERS), Region=region), shape_word


def _plan_speech(rng, scene):
  """Whisper-like segments (clip-relative spans, leading-space texts)."""
  obj = scene['objects'][0]
  texts = [_fix_articles(_pick(rng, _SPEECH_OPENERS).format(
      colour=obj['colour'], shape=_pick(rng, SHAPE_WORDS[obj['shape']])))]
  count = int(rng.integers(1, 4))
  if count >= 2:
    texts.append(_pick(rng, _SPEECH_ACTIONS[obj['action']]))
  if count == 3:
    texts.append(_pick(rng, _SPEECH_EXTRAS))
  duration = scene['num_frames'] / scene['fps']
  # Speech fills most of the clip; in a quarter of the clips the last segment
  # runs past its end, as Whisper segments do in the real data.
  start = rng.uniform(0.0, min(0.4, 0.15 * duration))
  stop = duration + (rng.uniform(0.1, 0.6) if rng.uniform() < 0.25
                     else -rng.uniform(0.0, min(0.3, 0.1 * duration)))
  weights = np.array([len(t.split()) for t in texts], np.float64)
  bounds = start + (stop - start) * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
  return [{'span': [round(float(a), 2), round(float(b), 2)], 'text': t}
          for a, b, t in zip(bounds[:-1], bounds[1:], texts)]


def _caption(rng, video, scene):
  """Vript caption dict (content, shot_type, camera_movement, scene_title)."""
  theme = video['theme']
  theme_def = _THEMES[video['theme_index']]
  c0, c1 = theme['colours'][0][0], theme['colours'][1][0]
  bg = _pick(rng, _BACKDROP_NOUNS)
  p0, p1 = (str(p) for p in rng.choice(theme_def['places'], size=2, replace=False))
  sentences = [_capitalise(_pick(rng, _SETTING_TEMPLATES).format(
      c0=c0, c1=c1, bg=bg, texture=_pick(rng, _TEXTURE_PHRASES[theme['texture']]), p0=p0,
      p1=p1))]
  title_shape = None
  for obj in scene['objects']:
    sentence, shape_word = _object_sentence(rng, obj, scene['camera'], title_shape is None)
    title_shape = title_shape or shape_word
    sentences.append(sentence)
  sentences.append(_pick(rng, _CAMERA_SENTENCES[scene['camera']['kind']]).format(bg=bg))
  if scene['voiceover'] == 'mentioned':
    sentences.append(_pick(rng, _MENTION_TEMPLATES).format(text=scene['asr'][0]['text'].strip()))
  closings = list(rng.permutation(len(_CLOSING_SENTENCES)))
  while len(' '.join(sentences).split()) < 40:
    sentences.append(_CLOSING_SENTENCES[int(closings.pop())])
  content = _fix_articles(' '.join(sentences))
  first = scene['objects'][0]
  shot_shape = _pick(rng, SHAPE_WORDS[first['shape']])
  shot = _fix_articles(_SHOT_PHRASES[scene['shot_type']].format(
      size=first['size'], colour=first['colour'], shape=shot_shape, c0=c0,
      count=_count_phrase(scene['objects'])))
  title = (f'{_title_case(first["colour"])} {_title_case(title_shape)} '
           f'{_TITLE_VERBS[first["action"]]} '
           f'{_pick(rng, ("in", "over", "by", "near"))} the '
           f'{_title_case(_pick(rng, theme_def["places"]))}')
  return {'shot_type': shot, 'camera_movement': _CAMERA_PHRASES[scene['camera']['kind']],
          'content': content, 'scene_title': title}


def _video_title(rng, group, theme_index, first_shape):
  theme = _THEMES[theme_index]
  if group == LONG_GROUP:
    return _pick(rng, _LONG_TITLES).format(Theme=theme['title'])
  return _pick(rng, _SHORT_TITLES).format(theme=theme['title'].lower(), shape=first_shape)


def plan_dataset(*, num_long_videos, num_short_videos, scenes_per_video, frames_per_scene, fps,
                 seed):
  """Describes every video and scene, captions included (renders nothing).

  Returns:
    A list of video dicts: `video_id`, `group`, `video_title`, `theme`
    (texture, colours, period, angle) and `scenes`, each scene a dict with
    `clip_id`, `scene` (1-based), `num_frames`, `start_frame`, `fps`,
    `duration`, `shot_type`, `camera` (kind, start/end view centre and width),
    `objects` (shape, colour, size, radius, action, start/end pose, ramp and
    action parameters), `voiceover` (a `VOICEOVER_KINDS` entry), `asr`
    (segments, [] when 'none') and `caption` (the Vript caption dict).
  """
  _check_range('scenes_per_video', scenes_per_video, 1)
  _check_range('frames_per_scene', frames_per_scene, 2)
  counts = {LONG_GROUP: num_long_videos, SHORT_GROUP: num_short_videos}
  for name, count in (('num_long_videos', num_long_videos),
                      ('num_short_videos', num_short_videos)):
    if count < 0:
      raise ValueError(f'{name} must be >= 0, got {count}')
  if not isinstance(fps, int) or fps <= 0:
    raise ValueError(f'fps must be a positive int, got {fps!r}')
  total = num_long_videos + num_short_videos
  ids = _video_ids(seed, total)
  themes = _theme_order(seed, total)
  videos = []
  for group_index, group in enumerate(GROUPS):
    for video_index in range(counts[group]):
      index = len(videos)
      rng = np.random.default_rng((seed, _STREAM_PLAN, group_index, video_index))
      video_id = ids[index] + ('_0' if group == SHORT_GROUP else '')
      theme = _plan_theme(themes[index], rng)
      scenes = []
      start_frame = 0
      for n in range(1, int(rng.integers(scenes_per_video[0], scenes_per_video[1] + 1)) + 1):
        frames = int(rng.integers(frames_per_scene[0], frames_per_scene[1] + 1))
        scenes.append({'clip_id': f'{video_id}-Scene-{n:03d}', 'scene': n, 'num_frames': frames,
                       'start_frame': start_frame, 'fps': fps, 'duration': frames / fps,
                       **_plan_scene(rng, theme)})
        start_frame += frames
      videos.append({'video_id': video_id, 'group': group, 'theme_index': themes[index],
                     'theme': theme, 'scenes': scenes})
  _ensure_voiceover_kinds(videos)
  for video_number, video in enumerate(videos):
    for scene in video['scenes']:
      rng = np.random.default_rng((seed, _STREAM_TEXT, video_number, scene['scene']))
      scene['asr'] = _plan_speech(rng, scene) if scene['voiceover'] != 'none' else []
      scene['caption'] = _caption(rng, video, scene)
    rng = np.random.default_rng((seed, _STREAM_TEXT, video_number, 0))
    video['video_title'] = _video_title(rng, video['group'], video.pop('theme_index'),
                                        video['scenes'][0]['objects'][0]['shape'])
  return videos


def _check_range(name, value, minimum):
  low, high = value
  if not minimum <= low <= high:
    raise ValueError(f'{name} must be (min, max) with {minimum} <= min <= max, got {tuple(value)}')


# ---------------------------------------------------------------- rendering


def _regular_polygon(n, radius, phase=-math.pi / 2):
  angles = phase + 2 * math.pi * np.arange(n) / n
  return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius


def _star_polygon():
  outer = _regular_polygon(5, 1.0)
  inner = _regular_polygon(5, 0.45, -math.pi / 2 + math.pi / 5)
  return np.stack([outer, inner], axis=1).reshape(-1, 2)


_POLYGONS = {
    'triangle': _regular_polygon(3, 1.0) + np.array([0.0, 0.2]),
    'star': _star_polygon(),
    'diamond': np.array([(0.0, -1.0), (0.7, 0.0), (0.0, 1.0), (-0.7, 0.0)]),
}


def _box_sdf(qx, qy, half_x, half_y):
  dx, dy = np.abs(qx) - half_x, np.abs(qy) - half_y
  outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
  return outside + np.minimum(np.maximum(dx, dy), 0)


def _polygon_sdf(qx, qy, vertices):
  """Signed distance to a simple polygon (negative inside)."""
  vertices = vertices.astype(np.float32)
  nearest = None
  inside = np.zeros(qx.shape, bool)
  for a, b in zip(vertices, np.roll(vertices, -1, axis=0)):
    ex, ey = b - a
    wx, wy = qx - a[0], qy - a[1]
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
    dist = (wx - ex * t) ** 2 + (wy - ey * t) ** 2
    nearest = dist if nearest is None else np.minimum(nearest, dist)
    if ey != 0:
      inside ^= ((a[1] > qy) != (b[1] > qy)) & (qx < a[0] + ex * (qy - a[1]) / ey)
  return np.where(inside, -1.0, 1.0) * np.sqrt(nearest)


def _shape_sdf(shape, qx, qy):
  """Signed distance in units of the object radius."""
  if shape == 'disc':
    return np.hypot(qx, qy) - 1.0
  if shape == 'ring':
    return np.abs(np.hypot(qx, qy) - 0.72) - 0.28
  if shape == 'square':
    return _box_sdf(qx, qy, 0.8, 0.8)
  if shape == 'cross':
    return np.minimum(_box_sdf(qx, qy, 1.0, 0.3), _box_sdf(qx, qy, 0.3, 1.0))
  if shape == 'bar':
    return _box_sdf(qx, qy, 1.0, 0.28)
  return _polygon_sdf(qx, qy, _POLYGONS[shape])


def _smooth_band(phase, sharpness):
  """Anti-aliased square wave: ~1 on half of every period of `phase`."""
  distance = np.abs(phase - np.floor(phase) - 0.5)
  return np.clip(0.5 + (0.25 - distance) * sharpness, 0, 1)


def _hash01(ix, iy):
  h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663)
  return ((h % 1009) / 1008.0).astype(np.float32)


def _texture(theme, x, y, pixel):
  """Mix weight in [0, 1] between the two theme colours at world (x, y)."""
  period = theme['period']
  cos, sin = math.cos(theme['angle']), math.sin(theme['angle'])
  u = (x * cos + y * sin) / period
  v = (-x * sin + y * cos) / period
  sharp = period / pixel[..., None, None]
  kind = theme['texture']
  if kind == 'gradient':
    return 0.5 + 0.5 * np.sin(2 * math.pi * u / 6)
  if kind == 'stripes':
    return _smooth_band(u, sharp)
  if kind == 'waves':
    return _smooth_band(v + 0.3 * np.sin(2 * math.pi * u / 2), sharp)
  if kind == 'checker':
    return np.abs(_smooth_band(u / 2, 2 * sharp) - _smooth_band(v / 2, 2 * sharp))
  if kind == 'dots':
    fu, fv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
    return np.clip(0.5 + (0.22 - np.hypot(fu, fv)) * sharp, 0, 1)
  if kind == 'grid':
    fu, fv = np.abs(u - np.round(u)), np.abs(v - np.round(v))
    return np.clip(0.5 + (0.05 - np.minimum(fu, fv)) * sharp, 0, 1)
  if kind == 'speckle':
    return 0.35 + 0.65 * _hash01(np.floor(u * 3), np.floor(v * 3))
  if kind == 'bricks':
    row = np.floor(v * 2)
    bu = u + 0.5 * (row % 2)
    # Distances to the nearest joint, in periods (a brick is 1 x 0.5).
    mortar = np.minimum(np.abs(bu - np.round(bu)), np.abs(v * 2 - np.round(v * 2)) / 2)
    return np.clip(0.5 + (0.04 - mortar) * sharp, 0, 1)
  raise ValueError(f'theme texture {kind!r} is not one of {_TEXTURES}')


def _lerp(start, end, t):
  return start + (end - start) * t


def _object_alpha_and_pose(obj, t, qx, qy, pixel):
  """Coverage (T, H, W) of `obj` at clip times `t` (T,) in [0, 1]."""
  a, b = obj['ramp']
  s = np.clip((t - a) / max(b - a, 1e-6), 0, 1)
  pose = {k: _lerp(obj['start'][k], obj['end'][k], s) for k in obj['start']}
  if obj['action'] == 'bounce':
    pose['y'] = pose['y'] - obj['bounce_height'] * np.abs(np.sin(math.pi * obj['bounces'] * t))
  cx, cy, cos, sin, radius = (v[:, None, None] for v in (
      pose['x'], pose['y'], np.cos(pose['angle']), np.sin(pose['angle']),
      obj['radius'] * pose['scale']))
  # Object frame: undo the rotation, then scale to unit radius.
  lx = ((qx - cx) * cos + (qy - cy) * sin) / radius
  ly = (-(qx - cx) * sin + (qy - cy) * cos) / radius
  distance = _shape_sdf(obj['shape'], lx, ly) * radius
  coverage = np.clip(0.5 - distance / pixel[:, None, None], 0, 1)
  return coverage * pose['opacity'][:, None, None]


def render_scene(video, scene, resolution):
  """Frames (num_frames, resolution, resolution, 3) uint8 of one scene.

  Args:
    video: a video dict of `plan_dataset` (or of `synthetic_scenes.json`).
    scene: one of its scenes.
    resolution: output height and width in pixels.
  """
  theme = video['theme']
  colours = [np.array(rgb, np.float32) for _, rgb in theme['colours']]
  num_frames = scene['num_frames']
  times = np.arange(num_frames, dtype=np.float32) / (num_frames - 1)
  grid = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution - 0.5
  chunk = max(1, _FRAME_CHUNK_PIXELS // (resolution * resolution))
  frames = []
  camera = scene['camera']
  for first in range(0, num_frames, chunk):
    t = times[first:first + chunk]
    cam_x = _lerp(camera['start']['x'], camera['end']['x'], t)
    cam_y = _lerp(camera['start']['y'], camera['end']['y'], t)
    width = camera['start']['width'] * (camera['end']['width'] / camera['start']['width']) ** t
    x = cam_x[:, None, None] + grid[None, None, :] * width[:, None, None]
    y = cam_y[:, None, None] + grid[None, :, None] * width[:, None, None]
    x, y = np.broadcast_arrays(x, y)
    pixel = (width / resolution).astype(np.float32)
    mix = _texture(theme, x, y, pixel)[..., None]
    image = colours[0] * (1 - mix) + colours[1] * mix
    for obj in scene['objects']:
      alpha = _object_alpha_and_pose(obj, t, x, y, pixel)[..., None]
      image = image * (1 - alpha) + np.array(obj['rgb'], np.float32) * alpha
    frames.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
  return np.concatenate(frames)


def _write_mp4(path, clips, fps, crf):
  with av.open(path, 'w', format='mp4') as container:
    stream = container.add_stream('libx264', rate=fps,
                                  options={'crf': str(crf), 'preset': 'medium'})
    stream.height, stream.width = clips[0].shape[1:3]
    stream.pix_fmt = 'yuv420p'
    # Multi-threaded x264 output depends on thread timing; one thread keeps
    # the bytes reproducible.
    stream.codec_context.thread_count = 1
    for index, frame in enumerate(frame for frames in clips for frame in frames):
      video_frame = av.VideoFrame.from_ndarray(frame, format='rgb24')
      video_frame.pts = index
      container.mux(stream.encode(video_frame))
    container.mux(stream.encode())


# ------------------------------------------------------------------ writing


def _write_json(path, obj):
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=4)


def _write_jsonl(path, records):
  with open(path, 'w', encoding='utf-8') as f:
    for record in records:
      f.write(json.dumps(record) + '\n')


def _clip_record(video, scene):
  return {'video_id': video['video_id'], 'clip_id': scene['clip_id'],
          'video_title': video['video_title'], 'caption': scene['caption'],
          'voiceover': [_full_text(scene['asr']).strip()]}


def _full_text(segments):
  return ''.join(s['text'] + ' ' for s in segments)


def _write_video(root, video, resolution, crf):
  group, video_id, scenes = video['group'], video['video_id'], video['scenes']
  clip_dir = os.path.join(root, f'{group}_clips', video_id)
  os.makedirs(clip_dir)
  clips = []
  for scene in scenes:
    clips.append(render_scene(video, scene, resolution))
    _write_mp4(os.path.join(clip_dir, scene['clip_id'] + '.mp4'), clips[-1:], scene['fps'], crf)
  _write_mp4(os.path.join(root, group, video_id + '.mp4'), clips, scenes[0]['fps'], crf)
  _write_jsonl(os.path.join(clip_dir, f'{video_id}_asr.jsonl'), [
      {'clip_id': s['clip_id'], 'duration': s['duration'], 'lang': 'en', 'scene_text': s['asr'],
       'full_text': _full_text(s['asr'])} for s in reversed(scenes)])
  _write_json(os.path.join(clip_dir, f'{video_id}_cut_meta.json'), {
      'video_id': video_id,
      'clips': [{'clip_id': s['clip_id'] + '.mp4', 'start': s['start_frame'] / s['fps'],
                 'end': (s['start_frame'] + s['num_frames']) / s['fps'],
                 'duration': s['duration']} for s in scenes]})
  _write_json(
      os.path.join(root, 'vript_captions', f'{group}_captions', f'{video_id}_caption.json'),
      {'meta': {'video_id': video_id, 'video_title': video['video_title'],
                'num_clips': len(scenes), 'integrity': True},
       'data': {s['clip_id']: _clip_record(video, s) for s in scenes}})


def _settings(num_long_videos, num_short_videos, scenes_per_video, frames_per_scene, resolution,
              fps, seed, crf):
  return {'format_version': FORMAT_VERSION, 'num_long_videos': int(num_long_videos),
          'num_short_videos': int(num_short_videos),
          'scenes_per_video': [int(v) for v in scenes_per_video],
          'frames_per_scene': [int(v) for v in frames_per_scene],
          'resolution': int(resolution), 'fps': fps, 'seed': int(seed), 'crf': int(crf)}


class OtherSettingsError(ValueError):
  """The folder holds a dataset `generate` wrote with other settings."""


def written_here(root):
  """Whether `root` holds a dataset written by `generate` (any settings)."""
  return _read_marker(root) is not None


def _read_marker(root):
  try:
    with open(os.path.join(root, COMPLETE_FILE), encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def generate(root, *, num_long_videos=8, num_short_videos=2,
             scenes_per_video=(3, 5), frames_per_scene=(16, 32), resolution=64,
             fps=8, seed=0, crf=23, replace=False):
  """Writes a synthetic Vript dataset under `root` (unless already there).

  Args:
    root: output folder; created. An existing empty folder is filled; one
      holding this dataset, same settings, is kept as it is.
    num_long_videos: videos in the 'vript_long_videos' group.
    num_short_videos: videos in the 'vript_short_videos' group ('_0' ids).
    scenes_per_video: (min, max) scenes (clips) per video, inclusive.
    frames_per_scene: (min, max) frames per clip, inclusive, min >= 2.
    resolution: frame height and width in pixels (even, >= 16).
    fps: frames per second, an int (clip duration = frames / fps).
    seed: fixes every random choice.
    crf: x264 constant rate factor (lower = better quality, larger files).
    replace: replace a dataset this function wrote with other settings
      (refused otherwise: runs may have trained or scored on it). A folder
      holding anything else is never replaced.

  Returns:
    Summary dict: `root`, `settings`, `num_videos`, `num_clips`, `num_frames`,
    `seconds`, `video_ids` ({group: [video ids]}), `scenes_path` (the
    `synthetic_scenes.json` sidecar: `plan_dataset` output, i.e. what every
    clip shows) and `paths` ({group: untrimmed video folder, group + '_clips':
    clip folder, 'captions': caption folder}).
  """
  # yuv420p halves the chroma planes, so libx264 needs even sizes.
  if resolution < 16 or resolution % 2:
    raise ValueError(f'resolution must be an even number >= 16, got {resolution}')
  if not 0 <= crf <= 51:
    raise ValueError(f'crf must be in [0, 51] (x264), got {crf}')
  if files.is_remote(root):
    # The clips are encoded into files by FFmpeg, which writes local paths.
    raise ValueError(f'root={root!r}: the synthetic Vript set is written to a local '
                     'folder; generate it there and copy it to the bucket')
  root = os.path.abspath(root)
  if os.path.exists(root) and not os.path.isdir(root):
    raise ValueError(f'{root} exists and is not a folder')
  settings = _settings(num_long_videos, num_short_videos, scenes_per_video,
                       frames_per_scene, resolution, fps, seed, crf)
  marker = _read_marker(root)
  if marker is not None and marker['settings'] == settings:
    return _with_paths(marker['summary'], root)
  if marker is not None and not replace:
    differ = [f"{k}={marker['settings'].get(k)!r} there, {v!r} asked" for k, v in settings.items()
              if marker['settings'].get(k) != v]
    raise OtherSettingsError(
        f'{root} holds a synthetic Vript dataset written with other settings '
        f'({"; ".join(differ)}); refusing to replace it: choose another root, or pass '
        'replace=True (--replace) to write it again')
  if os.path.isdir(root) and os.listdir(root) and marker is None:
    raise ValueError(f'{root} exists, is not empty and holds no '
                     f'{COMPLETE_FILE} marker of a synthetic Vript dataset; '
                     'refusing to replace it')
  videos = plan_dataset(num_long_videos=num_long_videos, num_short_videos=num_short_videos,
                        scenes_per_video=scenes_per_video, frames_per_scene=frames_per_scene,
                        fps=fps, seed=seed)
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  # The dataset folder is made inside a private scratch folder (mkdtemp's own
  # mode is 0o700) so that it gets the usual permissions.
  scratch = tempfile.mkdtemp(prefix='.synthetic-vript-', dir=parent)
  try:
    work = os.path.join(scratch, 'dataset')
    os.makedirs(work)
    summary = _write_dataset(work, videos, settings)
    if os.path.isdir(root):
      os.rename(root, os.path.join(scratch, 'old'))
    os.rename(work, root)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return _with_paths(summary, root)


def _with_paths(summary, root):
  paths = {'captions': os.path.join(root, 'vript_captions')}
  for group in GROUPS:
    paths[group] = os.path.join(root, group)
    paths[f'{group}_clips'] = os.path.join(root, f'{group}_clips')
  return {'root': root, **summary, 'scenes_path': os.path.join(root, SCENES_FILE), 'paths': paths}


def _write_dataset(work, videos, settings):
  """Writes every file into `work`; returns the root-independent summary."""
  for group in GROUPS:
    os.makedirs(os.path.join(work, group))
    os.makedirs(os.path.join(work, f'{group}_clips'))
    os.makedirs(os.path.join(work, 'vript_captions', f'{group}_captions'))
  for video in videos:
    _write_video(work, video, settings['resolution'], settings['crf'])
  for group in GROUPS:
    _write_jsonl(os.path.join(work, 'vript_captions', f'{group}_captions.jsonl'),
                 [_clip_record(v, s) for v in videos if v['group'] == group for s in v['scenes']])
  _write_json(os.path.join(work, SCENES_FILE), {'settings': settings, 'videos': videos})
  scenes = [s for v in videos for s in v['scenes']]
  num_frames = sum(s['num_frames'] for s in scenes)
  summary = {'settings': settings, 'num_videos': len(videos), 'num_clips': len(scenes),
             'num_frames': num_frames, 'seconds': num_frames / settings['fps'],
             'video_ids': {g: [v['video_id'] for v in videos if v['group'] == g] for g in GROUPS}}
  # Written last: its presence means the dataset is complete. It holds no
  # absolute path, so a moved dataset is still recognised.
  _write_json(os.path.join(work, COMPLETE_FILE), {'settings': settings, 'summary': summary})
  return summary


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m vwt_jax.data.vript.synthetic',
                                   description='Write a synthetic dataset in the Vript layout.')
  parser.add_argument('--root', required=True, help='output folder')
  parser.add_argument('--num_long_videos', type=int, default=8)
  parser.add_argument('--num_short_videos', type=int, default=2)
  for name, default in (('scenes_per_video', (3, 5)), ('frames_per_scene', (16, 32))):
    parser.add_argument(f'--{name}', type=int, nargs=2, default=default, metavar=('MIN', 'MAX'))
  parser.add_argument('--resolution', type=int, default=64)
  parser.add_argument('--fps', type=int, default=8)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--crf', type=int, default=23)
  parser.add_argument('--replace', action='store_true',
                      help='replace a synthetic dataset written there with other settings')
  args = vars(parser.parse_args(argv))
  summary = generate(args.pop('root'), **args)
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
