"""Throughput reporting and the metric writers (JSONL + TensorBoard events)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vwt_jax.core import metrics
from vwt_jax.core import progress


def test_compiled_flops_and_mfu_report():
  compiled = jax.jit(lambda a, b: a @ b).lower(
      jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
  flops = progress.compiled_flops(compiled)
  assert flops == 2 * 64 * 32 * 16
  tracker = progress.Progress(total_steps=10, global_batch_size=4, flops_per_step=flops)
  tracker._peak = 1e12  # pylint: disable=protected-access
  out = tracker.report(2)
  assert out["perf/examples_per_sec"] == 4 * out["perf/steps_per_sec"]
  # The same float64 product and quotient, perhaps in another order: a few
  # 2^-53 apart, inside the default rtol 1e-7.
  np.testing.assert_allclose(out["perf/mfu"], flops * out["perf/steps_per_sec"] / 1e12)
  assert tracker.report(2) == {}


def test_peak_flops_known_for_accelerators_only():
  assert progress.peak_flops_per_device() is None  # CPU: no MFU, TFLOP/s only


def test_writer_without_tensorflow_writes_jsonl_and_events(tmp_path):
  writer = metrics.create_writer(str(tmp_path), use_clu=False)
  writer.write_scalars(3, {"train/loss": np.float32(0.5)})
  writer.write_images(3, {"grid": np.zeros((1, 4, 4, 3), np.uint8)})
  writer.flush()
  writer.close()
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    record = json.loads(f.readline())
  assert record["step"] == 3 and record["train/loss"] == 0.5
  events = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
  assert events and os.path.getsize(tmp_path / events[0]) > 0
