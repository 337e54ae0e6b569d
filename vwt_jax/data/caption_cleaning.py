"""LlamaGen's prompt normalisation, applied to every caption before its T5 encoder.

LlamaGen's text-to-image models saw FLAN-T5-XL features of *cleaned* captions,
both when their training features were extracted and when they sample: web
alt-text stripped of URLs, markup, handles, file names, product codes, shop
boilerplate ("free shipping", "click for more"), CJK ideographs and stray
symbols, then lowercased with its quotes and dashes unified. Features of raw
prompts differ from what the GPT was trained on, so the same normalisation
runs here, character for character.

* `clean_caption(text)`: one pass of the cleaner.
* `preprocess_caption(text, clean=True)`: what LlamaGen feeds its tokenizer:
  two passes (one is not idempotent: e.g. quotes around a caption survive a
  pass that ends with surrounding whitespace, and removals join fragments
  into new matches), or only lowercasing and stripping with `clean=False`.

Needs ftfy and beautifulsoup4 (`pip install 'vwt_jax[t2i]'`), imported on
first use. ftfy's mojibake repair changes between releases, so its version is
pinned: `tests/fixtures/llamagen_captions/` records the outputs of the
official code that these functions must reproduce exactly.

  preprocess_caption('<b>Cute CAT</b> photo.jpg http://x.com')  # 'cute cat'
"""

import functools
import html
import re
from typing import Any, Callable
import urllib.parse
import warnings

T2I_PIP = "pip install 'vwt_jax[t2i]'"

# A rule: (compiled pattern, replacement, why it exists). Rules of a group run
# in order, each over the whole text: later rules see earlier removals, so the
# order is part of the result.
_Rule = tuple[re.Pattern, str, str]


def _rules(*rules: tuple[str, str, str]) -> tuple[_Rule, ...]:
  return tuple((re.compile(pattern), replacement, why) for pattern, replacement, why in rules)


def _apply(rules: tuple[_Rule, ...], text: str) -> str:
  for pattern, replacement, _ in rules:
    text = pattern.sub(replacement, text)
  return text


def _char_class(chars: str) -> str:
  return "[" + re.escape(chars) + "]"


# Host names: any dotted run of ASCII letters, digits and hyphens whose last
# label starts with one of these endings (so 'a.community' counts), then an
# optional path of word characters, '/' and '-'. Not when an '@' follows (the
# host part of an e-mail address is left to the handle rule).
_TLDS = "com|co|ru|net|org|edu|gov|it"
_HOST = rf"[A-Za-z0-9.-]+\.(?:{_TLDS})[\w/-]*\b/?(?!@)"
# File types whose names (and bare mentions) are scraping residue. No word
# boundary after them: words that merely start with one lose that prefix too
# ('epsilon' -> 'ilon'), as in LlamaGen.
_EXTENSIONS = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"
# Unicode dash punctuation (hyphen-minus included) folded into one '-'.
_DASHES = ("\u002d\u058a\u05be\u1400\u1806\u2010\u2011\u2012\u2013\u2014\u2015\u2e17\u2e1a"
           "\u2e3a\u2e3b\u2e40\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d")
# Symbols that are dropped to a space wherever they occur, singly or in runs.
_STRAY_SYMBOLS = "#&@*~|\\/()[]{}\u00ae\u2022\u00a9\u2122\u00b7\u00ba\u00bd\u00be\u00bf\u00a1\u00a7"

# On the lowercased text, before markup is parsed: URLs may sit inside tag
# attributes or be mangled by the parser.
_BEFORE_MARKUP = _rules(
    ("<person>", "person", "LAION-style placeholder; the parser would drop it as a tag"),
    (rf"\b(?:https?:(?:/{{1,3}}|[A-Za-z0-9%])|{_HOST})", "",
     "links: a scheme prefix (the rest of the URL goes only if it is a known host) or a host"),
    (rf"\b(?:www:(?:/{{1,3}}|[A-Za-z0-9%])|{_HOST})", "",
     "a second sweep: hosts exposed by the first one, and the 'www:' typo of a scheme"),
)

# On the text content of the markup, before ftfy.
_BEFORE_FTFY = _rules(
    (r"@\w+", "", "social-media handles (and the user part of e-mail addresses)"),
    ("[\u31c0-\u9fff]+", "",
     "CJK strokes, enclosed and compatibility forms, hexagrams and ideographs: T5's "
     "vocabulary has no ideographs (kana and hangul are outside this block and stay)"),
    (_char_class(_DASHES) + "+", "-", "one kind of dash, so later dash rules see them all"),
    (_char_class("`\u00b4\u00ab\u00bb\u201c\u201d\u00a8"), '"', "one double quote"),
    (_char_class("\u2018\u2019"), "'", "one single quote"),
    (r"&quot;?", "", "doubly escaped entities the parser left behind"),
    (r"&amp", "", "likewise (its ';', if any, stays)"),
    (r"\d{1,3}(?:\.\d{1,3}){3}", " ", "IPv4 addresses"),
    (r"\d:\d\d\s+$", "", "a trailing 'chapter:verse'-style article reference"),
    (r"\\n", " ", "newlines that were escaped into two characters"),
    (r"#(?:\d{1,3}|\d{5,})\b", "", "numbered tags and ids (four digits, often years, stay)"),
    (r"\b\d{6,}\b", "", "long numbers: ids, phone and stock numbers"),
    (rf"\S+\.(?:{_EXTENSIONS})", "", "file names"),
    (r"[\"']{2,}", '"', "runs of quotes"),
    (r"\.{2,}", " ", "ellipses"),
    (_char_class(_STRAY_SYMBOLS) + "+", " ", "decorations such as ***SALE*** and #hashtags"),
    (r"\s+\.\s+", " ", "a full stop standing alone"),
)

# After ftfy: mostly scraping boilerplate.
_AFTER_FTFY = _rules(
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", "", "short-prefix product codes (jc6640)"),
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", "", "letters-digits-letters codes (jc6640vc)"),
    (r"\b\d+[a-zA-Z]+\d+\b", "", "digits-letters-digits codes (6640vc231)"),
    (r"(?:worldwide\s+)?(?:free\s+)?shipping", "", "shop boilerplate"),
    (r"(?:free\s)?download(?:\sfree)?", "", "download-site boilerplate"),
    (r"\bclick\s(?:for|on)\s\w+", "", "'click for more', 'click on image'"),
    (rf"\b(?:{_EXTENSIONS})(?:\simages?)?", "", "bare file types ('png images')"),
    (r"\bpage\s+\d+\b", "", "pagination"),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " ", "longer mixed codes (j2d1a2a3)"),
    (r"\b\d+\.?\d*[x\u0445\u00d7]\d+\.?\d*\b", "",
     "sizes such as 1920x1080 (Latin x, Cyrillic kha or the multiplication sign)"),
    (r"\b\s+:\s+", ": ", "no space before a colon"),
    (r"(\D[,./])\b", r"\1 ", "a space after punctuation glued to the next word"),
    (r"\s+", " ", "single spaces"),
)

# Anchored at the ends of the text. It is not stripped first: a space left at
# either end shields that end from these rules in this pass (the second pass,
# which starts stripped, reaches it).
_AT_ENDS = _rules(
    (r"(?s)^[\"'](.+)[\"']$", r"\1", "quotes around the whole caption (either kind at each end)"),
    (r"^[-'_,:;]", "", "one stray leading punctuation mark"),
    (r"[-'_,:+]$", "", "one stray trailing punctuation mark"),
    (r"^\.\S+$", "", "a lone dot-file name"),
)

# Captions with many '-' / '_' are slugs or file names: split them into words.
_MAX_JOINERS = 3


@functools.cache
def _dependencies() -> tuple[Callable[[str], str], Callable[[str], str]]:
  """(ftfy.fix_text, the text content of HTML markup), imported once."""
  try:
    import bs4  # pylint: disable=g-import-not-at-top
    import ftfy  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        f"LlamaGen's caption cleaning needs ftfy and beautifulsoup4; {e.name} is missing "
        f"({T2I_PIP})", name=e.name) from None

  def markup_text(text: str) -> str:
    with warnings.catch_warnings():
      # bs4 warns about markup that looks like a URL or a file name: many
      # captions do, and are still just text.
      warnings.simplefilter("ignore", bs4.MarkupResemblesLocatorWarning)
      return bs4.BeautifulSoup(text, features="html.parser").text

  return ftfy.fix_text, markup_text


def clean_caption(text: Any) -> str:
  """One pass of LlamaGen's caption cleaner (see the module docstring).

  `text` is converted with `str` first. Percent-escapes and '+' are decoded
  (captions scraped from URLs), the text is lowercased, then cleaned.
  """
  fix_text, markup_text = _dependencies()
  text = urllib.parse.unquote_plus(str(text)).strip().lower()
  text = _apply(_BEFORE_MARKUP, text)
  text = markup_text(text)
  text = _apply(_BEFORE_FTFY, text)
  if text.count("-") + text.count("_") > _MAX_JOINERS:
    text = text.replace("-", " ").replace("_", " ")
  # Mojibake and width/ligature fixes, then entities up to two levels deep.
  text = html.unescape(html.unescape(fix_text(text))).strip()
  text = _apply(_AFTER_FTFY, text)
  return _apply(_AT_ENDS, text).strip()


def preprocess_caption(text: str, clean: bool = True) -> str:
  """A caption as LlamaGen's T5 embedder tokenizes it: `clean_caption` twice,
  or only lowercased and stripped with `clean=False` (its
  `use_text_preprocessing=False`)."""
  if not clean:
    return text.lower().strip()
  return clean_caption(clean_caption(text))
