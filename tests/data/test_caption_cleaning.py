"""LlamaGen's caption cleaning, checked string for string against the official code."""

import builtins
import json
import os

import pytest

from vwt_jax.data import caption_cleaning

# This repository's set (tests/fixtures/README.md), whatever VWT_FIXTURES says:
# the expected strings belong to the pinned ftfy of the t2i extra.
CAPTIONS = os.path.join(os.path.dirname(__file__), os.pardir, 'fixtures', 'llamagen_captions')


def _cases():
  with open(os.path.join(CAPTIONS, 'captions.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_the_fixture_was_made_with_the_pinned_libraries():
  import bs4  # pylint: disable=g-import-not-at-top
  import ftfy  # pylint: disable=g-import-not-at-top
  with open(os.path.join(CAPTIONS, 'generation_spec.json'), encoding='utf-8') as f:
    spec = json.load(f)
  # Mojibake repair differs between ftfy releases: a mismatch below would
  # otherwise read as a cleaning bug.
  assert ftfy.__version__ == spec['ftfy']
  assert bs4.__version__.split('.')[:2] == spec['beautifulsoup4'].split('.')[:2]
  assert len(_cases()) == spec['num_captions'] >= 300


def test_every_caption_is_cleaned_as_the_official_code_does():
  cases = _cases()
  for key, clean in (('clean_once', caption_cleaning.clean_caption),
                     ('clean', caption_cleaning.preprocess_caption)):
    # (caption, ours, official) of every difference: all of them at once.
    wrong = [(c['caption'], got, c[key]) for c in cases
             if (got := clean(c['caption'])) != c[key]]
    assert wrong == [], key
  # The second pass matters for some captions of the set.
  assert sum(c['clean'] != c['clean_once'] for c in cases) > 10


@pytest.mark.parametrize('text, once, twice', [
    # Escaped markup: unescaped by the first pass, parsed away by the second.
    ('&lt;b&gt;Escaped&lt;/b&gt;', '<b>escaped< b>', 'escaped< b>'),
    # Numeric entities decoded by the parser can bring capitals back.
    ('&#65;&#66; tag', 'AB tag', 'ab tag'),
    ('Free SHIPPING on <i>jc6640</i> 1920x1080 photo.jpg', 'on', 'on'),
    ('this-is-my-cute-cat', 'this is my cute cat', 'this is my cute cat'),
    ('Tag #12 #2024 #123456 @someone', 'tag 2024', 'tag 2024'),
    # Ideographs go; kana and hangul stay.
    ('\u4e00\u53ea\u732b \u30ab\u30bf\u30ab\u30ca \ud55c\uad6d',
     '\u30ab\u30bf\u30ab\u30ca \ud55c\uad6d', '\u30ab\u30bf\u30ab\u30ca \ud55c\uad6d'),
    ('', '', ''),
])
def test_small_cases(text, once, twice):
  assert caption_cleaning.clean_caption(text) == once
  assert caption_cleaning.preprocess_caption(text) == twice


def test_without_cleaning_only_lowercases_and_strips():
  text = '  <b>A Cat</b> photo.jpg  '
  assert caption_cleaning.preprocess_caption(text, clean=False) == '<b>a cat</b> photo.jpg'


def test_a_missing_dependency_names_the_extra(monkeypatch):
  real_import = builtins.__import__

  def no_ftfy(name, *args, **kwargs):
    if name == 'ftfy':
      raise ModuleNotFoundError("No module named 'ftfy'", name='ftfy')
    return real_import(name, *args, **kwargs)

  caption_cleaning._dependencies.cache_clear()
  monkeypatch.setattr(builtins, '__import__', no_ftfy)
  try:
    with pytest.raises(ModuleNotFoundError,
                       match=r"ftfy is missing \(pip install 'vwt_jax\[t2i\]'\)"):
      caption_cleaning.clean_caption('a caption')
  finally:
    monkeypatch.undo()
    caption_cleaning._dependencies.cache_clear()
  assert caption_cleaning.clean_caption('A Caption') == 'a caption'
