"""Throughput, ETA, model-FLOPs utilisation and profiler traces of a training run."""

import time
from typing import Any

from absl import logging
import jax

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets.
_PEAK_FLOPS = (("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l4", 121e12),
               ("v6", 918e12), ("v5p", 459e12), ("v5 lite", 197e12), ("v5e", 197e12),
               ("v4", 275e12), ("v3", 123e12))


# Peak memory (HBM) bandwidth in bytes/s per device, from the same data sheets;
# the first name found in the device kind wins, so variants come first.
_PEAK_BANDWIDTH = (("h200", 4.8e12), ("h100 pcie", 2.0e12), ("h100", 3.35e12),
                   ("a100-sxm4-80gb", 2.039e12), ("a100 80gb pcie", 1.935e12),
                   ("a100", 1.555e12), ("l4", 0.3e12), ("v6", 1.64e12), ("v5p", 2.765e12),
                   ("v5 lite", 0.819e12), ("v5e", 0.819e12), ("v4", 1.2e12), ("v3", 0.9e12))


def _by_kind(table, device) -> float | None:
  kind = (device or jax.devices()[0]).device_kind.lower()
  return next((value for name, value in table if name in kind), None)


def peak_flops_per_device(device=None) -> float | None:
  return _by_kind(_PEAK_FLOPS, device)


def peak_bandwidth_per_device(device=None) -> float | None:
  """Memory bandwidth in bytes/s (None where the device kind is not in the table)."""
  return _by_kind(_PEAK_BANDWIDTH, device)


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled computation, as XLA counts them."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return float(analysis["flops"])


def _format_seconds(seconds: float) -> str:
  hours, rest = divmod(int(seconds), 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours:d}:{minutes:02d}:{secs:02d}"


class Progress:
  """Reports steps/s, examples/s, ETA and MFU every time `report` is called."""

  def __init__(self, total_steps: int, global_batch_size: int, start_step: int = 0,
               flops_per_step: float | None = None):
    self.total_steps = total_steps
    self.global_batch_size = global_batch_size
    self.flops_per_step = flops_per_step
    self._peak = peak_flops_per_device()
    self._last_time, self._last_step, self._paused = time.perf_counter(), start_step, 0.0

  def pause(self, seconds: float):
    """Excludes time spent outside training steps (evals, checkpoints)."""
    self._paused += seconds

  def report(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    elapsed = max(now - self._last_time - self._paused, 1e-9)
    steps = step - self._last_step
    self._last_time, self._last_step, self._paused = now, step, 0.0
    if steps <= 0:
      return {}
    steps_per_sec = steps / elapsed
    out = {"perf/steps_per_sec": steps_per_sec,
           "perf/examples_per_sec": steps_per_sec * self.global_batch_size}
    mfu = ""
    if self.flops_per_step:
      # The compiled SPMD module is per device, and so is its FLOP count.
      out["perf/tflops_per_sec_per_device"] = self.flops_per_step * steps_per_sec / 1e12
      mfu = f", {out['perf/tflops_per_sec_per_device']:.3f} TFLOP/s/device"
      if self._peak:
        out["perf/mfu"] = self.flops_per_step * steps_per_sec / self._peak
        mfu += f", MFU {100 * out['perf/mfu']:.1f}%"
    logging.info("step %d/%d: %.2f steps/s, %.1f examples/s, ETA %s%s", step,
                 self.total_steps, steps_per_sec, out["perf/examples_per_sec"],
                 _format_seconds((self.total_steps - step) / steps_per_sec), mfu)
    return out


class ProfileWindow:
  """A `jax.profiler` trace of steps [start_step, start_step + num_steps).

  Call `before_step(step)` before a step is dispatched and `after_step(step,
  outputs)` after it; the trace starts at the first step inside the window
  (also in a resumed run) and stops once the window's last step has finished
  on the devices, or on leaving the `with` block. `num_steps=0` disables it.
  The trace is written under `directory` for TensorBoard's profile plugin.
  """

  def __init__(self, directory: str, start_step: int, num_steps: int):
    if num_steps < 0 or (num_steps and start_step < 1):
      raise ValueError(f"profile window start_step={start_step}, num_steps={num_steps} "
                       "(config.profile_start_step, config.profile_num_steps): expected "
                       "num_steps >= 0 and, when on, start_step >= 1")
    self.directory = directory
    self.start_step, self.num_steps = start_step, num_steps
    self.active = False
    self.traced_steps = 0

  @property
  def last_step(self) -> int:
    return self.start_step + self.num_steps - 1

  def before_step(self, step: int):
    if (self.num_steps and not self.active and not self.traced_steps
        and self.start_step <= step <= self.last_step):
      logging.info("profiling steps %d-%d into %s", step, self.last_step, self.directory)
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after_step(self, step: int, outputs: Any):
    if not self.active:
      return
    self.traced_steps += 1
    if step >= self.last_step:
      # Dispatch is asynchronous: wait for the devices, or the trace would end
      # before the window's work does.
      jax.block_until_ready(outputs)
      self.close()

  def close(self):
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.info("profile of %d step(s) written to %s", self.traced_steps, self.directory)
    elif self.num_steps and not self.traced_steps:
      logging.warning("profile window (steps %d-%d) was not reached: nothing traced",
                      self.start_step, self.last_step)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
