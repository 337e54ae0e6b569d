"""Throughput reporting and the metric writers (JSONL + TensorBoard events)."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
  assert progress.peak_bandwidth_per_device() is None


@pytest.mark.parametrize("kind, flops, bandwidth", [
    ("NVIDIA H100 80GB HBM3", 989e12, 3.35e12), ("NVIDIA H100 PCIe", 989e12, 2.0e12),
    ("NVIDIA H200", 989e12, 4.8e12), ("NVIDIA A100-SXM4-80GB", 312e12, 2.039e12),
    ("NVIDIA A100-SXM4-40GB", 312e12, 1.555e12), ("TPU v5 lite", 197e12, 0.819e12),
    ("TPU v4", 275e12, 1.2e12)])
def test_data_sheet_peaks_by_device_kind(kind, flops, bandwidth):
  device = types.SimpleNamespace(device_kind=kind)
  assert progress.peak_flops_per_device(device) == flops
  assert progress.peak_bandwidth_per_device(device) == bandwidth


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
