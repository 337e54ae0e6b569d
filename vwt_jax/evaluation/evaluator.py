"""The ADM evaluator (guided-diffusion `evaluations/evaluator.py`) over our Inception.

IS, FID, sFID and improved precision/recall of a sample batch against a
reference batch (ADM `.npz` files). Only the network runs sharded on the mesh;
the statistics and the Frechet step are float64 on the host, the
precision/recall distance blocks jitted on the default device.
"""

import os
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vwt_jax.conversion.inception import CONVERT_COMMAND, load_inception
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.evaluation import adm_npz
from vwt_jax.evaluation.fid import FeatureStatistics, Statistics, frechet_distance
from vwt_jax.evaluation.inception_score import inception_score
from vwt_jax.evaluation.precision_recall import ManifoldEstimator, precision_recall
from vwt_jax.models.inception import InceptionV3

# ADM reads the npz images in batches of 64.
ADM_BATCH_SIZE = 64
# Metric keys and the labels of the lines ADM prints, in its order.
_REPORT_LABELS = (("inception_score", "Inception Score"), ("fid", "FID"), ("sfid", "sFID"),
                  ("precision", "Precision"), ("recall", "Recall"))

ApplyFn = Callable[[Any, jax.Array], tuple[jax.Array, dict]]


class Activations(NamedTuple):
  """Per-image Inception outputs (float32 numpy).

  pool: pool_3 [N, 2048]; spatial: mixed_6/conv[..., :7] [N, 2023];
  probs: softmax of the unbiased logits [N, 1008], None without the fc layer.
  """
  pool: np.ndarray
  spatial: np.ndarray
  probs: Optional[np.ndarray]


class ReferenceBatch(NamedTuple):
  """Activations of an npz's images and the statistics stored in it, if any.

  When `pool_stats` is set (the npz has `mu`), FID/sFID use the stored
  statistics and the activations serve only precision/recall (and IS for
  samples), as in ADM.
  """
  activations: Activations
  pool_stats: Optional[Statistics] = None
  spatial_stats: Optional[Statistics] = None


Batch = Union[Activations, ReferenceBatch]


def _global_array(host: np.ndarray, sharding) -> jax.Array:
  """A global array from a host copy that every process holds in full."""
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _inception_apply(params: Any, images: jax.Array) -> tuple[jax.Array, dict]:
  return InceptionV3().apply({"params": params}, images)


class InceptionRunner:
  """Runs the FID Inception over image batches, data-parallel on a mesh.

  Args:
    weights_path: `.npz` made by `python -m vwt_jax.conversion.inception`
      (config key `eval.inception_weights`).
    mesh: device mesh; the batch is split over its ('data', 'fsdp') axes and
      the weights are replicated. Defaults to all devices on 'data'.
    batch_size: images per forward pass (ADM: 64), rounded up to a multiple
      of the data-parallel size; a short last batch is zero-padded.
    apply_fn: `(params, images) -> (pool, aux)` replacing InceptionV3, with
      `params`; for tests of the plumbing only.
    params: the parameters for `apply_fn` (instead of `weights_path`).
  """

  def __init__(self, weights_path: Optional[str], *, mesh=None, batch_size: int = ADM_BATCH_SIZE,
               apply_fn: Optional[ApplyFn] = None, params: Any = None):
    if apply_fn is None:
      if not weights_path:
        raise ValueError(
            "no Inception weights given: set config key eval.inception_weights (or "
            f"--inception_weights / VWT_INCEPTION_WEIGHTS) to an .npz made by `{CONVERT_COMMAND}`")
      params = load_inception(weights_path)
      apply_fn = _inception_apply
    elif params is None:
      raise ValueError("InceptionRunner: apply_fn needs params")
    if batch_size < 1:
      raise ValueError(f"InceptionRunner: batch_size must be positive, got {batch_size}")
    self.mesh = mesh if mesh is not None else sharding_lib.create_mesh((-1, 1, 1))
    dp = sharding_lib.data_parallel_size(self.mesh)
    self.batch_size = -(-int(batch_size) // dp) * dp
    self._batch_sharding = sharding_lib.batch_sharding(self.mesh)
    replicated = sharding_lib.replicated(self.mesh)
    self.params = jax.tree.map(lambda x: _global_array(np.asarray(x), replicated), params)

    def forward(p, images):
      pool, aux = apply_fn(p, images)
      logits = aux.get("logits")
      probs = None if logits is None else jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      return pool.astype(jnp.float32), aux["spatial"].astype(jnp.float32), probs

    self._forward = jax.jit(forward, in_shardings=(replicated, self._batch_sharding),
                            out_shardings=self._batch_sharding)

  def _run(self, images: np.ndarray) -> tuple:
    """One padded global batch -> host numpy outputs for its real rows."""
    count = len(images)
    if count < self.batch_size:
      pad = np.zeros((self.batch_size - count,) + images.shape[1:], images.dtype)
      images = np.concatenate([images, pad])
    # Every process holds the whole global batch (all read the same file);
    # each device takes its rows.
    outputs = self._forward(self.params, _global_array(images, self._batch_sharding))
    return tuple(None if o is None else
                 np.asarray(multihost_utils.process_allgather(o, tiled=True))[:count]
                 for o in outputs)

  def activations(self, batches: Iterable[np.ndarray], total: Optional[int] = None,
                  desc: str = "") -> Activations:
    """Activations of NHWC images in [0, 255] (uint8 or float), in input order."""
    outputs = []
    with tqdm(total=total, desc=desc or "inception", unit="img") as bar:
      for batch in batches:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[-1] != 3:
          raise ValueError(f"InceptionRunner: images of shape {batch.shape}, expected "
                           "[N, H, W, 3]")
        if batch.dtype != np.uint8:
          batch = batch.astype(np.float32)
        for begin in range(0, len(batch), self.batch_size):
          outputs.append(self._run(batch[begin:begin + self.batch_size]))
          bar.update(len(outputs[-1][0]))
    if not outputs:
      raise ValueError("InceptionRunner.activations got no images")
    pool, spatial, probs = (None if o[0] is None else np.concatenate(o) for o in zip(*outputs))
    return Activations(pool, spatial, probs)


def _parts(batch: Batch) -> ReferenceBatch:
  return batch if isinstance(batch, ReferenceBatch) else ReferenceBatch(batch)


def _statistics(batch: ReferenceBatch) -> tuple[Statistics, Statistics]:
  if batch.pool_stats is not None:
    return batch.pool_stats, batch.spatial_stats
  return tuple(FeatureStatistics.from_activations(a).statistics()
               for a in (batch.activations.pool, batch.activations.spatial))


def compute_metrics(ref: Batch, samples: Batch,
                    estimator: Optional[ManifoldEstimator] = None) -> dict[str, Optional[float]]:
  """ADM's metrics of `samples` against `ref`, keyed as in `_REPORT_LABELS`.

  FID/sFID use stored statistics where a `ReferenceBatch` has them (ADM does
  this for both files); precision/recall always use the pool_3 activations.
  'inception_score' is None when the weights have no softmax layer.
  """
  ref, samples = _parts(ref), _parts(samples)
  ref_pool, ref_spatial = _statistics(ref)
  sample_pool, sample_spatial = _statistics(samples)
  probs = samples.activations.probs
  precision, recall = precision_recall(ref.activations.pool, samples.activations.pool, estimator)
  return {
      "inception_score": None if probs is None else inception_score(probs),
      "fid": frechet_distance(*sample_pool, *ref_pool),
      "sfid": frechet_distance(*sample_spatial, *ref_spatial),
      "precision": precision,
      "recall": recall,
  }


def format_report(metrics: dict) -> str:
  """The five result lines ADM prints ("Inception Score: ...", "FID: ...", ...)."""
  lines = []
  for key, label in _REPORT_LABELS:
    value = metrics.get(key)
    if value is None:
      lines.append(f"{label}: n/a (the Inception weights have no softmax/weights)"
                   if key == "inception_score" else f"{label}: n/a")
    else:
      lines.append(f"{label}: {float(value)}")
  return "\n".join(lines)


def load_batch(path: str, runner: InceptionRunner) -> ReferenceBatch:
  """Activations of `path`'s `arr_0` plus its stored statistics (if it has `mu`)."""
  with adm_npz.open_images(path) as reader:
    acts = runner.activations(reader.batches(runner.batch_size), total=len(reader),
                              desc=os.path.basename(path))
  stored = adm_npz.read_statistics(path)
  return ReferenceBatch(acts, *(stored or (None, None)))


def evaluate_npz(ref_path: str, sample_path: str, runner: InceptionRunner,
                 log: Callable[[str], None] = lambda message: None) -> dict:
  """ADM's evaluation of two `.npz` batches; `log` receives ADM's progress lines."""
  log("computing reference batch activations...")
  ref = load_batch(ref_path, runner)
  log("computing sample batch activations...")
  samples = load_batch(sample_path, runner)
  log("Computing evaluations...")
  return compute_metrics(ref, samples)
