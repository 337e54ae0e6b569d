"""What every parity kind shares: a per-array result and the comparison rule."""

import dataclasses

import numpy as np

# Suggested tolerances of the fixture READMEs (float32, highest matmul precision).
ACTIVATION_TOL = dict(atol=1e-4, rtol=1e-4)
PIXEL_TOL = dict(atol=2e-4, rtol=0.0)
LOSS_TOL = dict(atol=1e-7, rtol=1e-5)
EXACT = dict(atol=0.0, rtol=0.0)


@dataclasses.dataclass
class Result:
  name: str
  max_abs_err: float
  tol: str
  ok: bool

  def line(self) -> str:
    return f"{self.name}  {self.max_abs_err:.3e}  {self.tol}  {'OK' if self.ok else 'FAIL'}"


def compare(name: str, ours, ref, tol: dict) -> Result:
  ours, ref = np.asarray(ours), np.asarray(ref)
  if ours.shape != ref.shape:
    return Result(name, float("inf"), f"shape {ours.shape} vs {ref.shape}", False)
  if tol is EXACT:
    mismatches = int(np.sum(ours != ref))
    err = float(np.max(np.abs(ours.astype(np.float64) - ref))) if ours.size else 0.0
    return Result(name, err, "exact", mismatches == 0)
  diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
  err = float(np.max(diff)) if diff.size else 0.0
  ok = bool(np.all(diff <= tol["atol"] + tol["rtol"] * np.abs(ref))) and np.isfinite(err)
  return Result(name, err, f"atol={tol['atol']:g},rtol={tol['rtol']:g}", ok)


def compare_io(prefix: str, io, ours: dict, inputs, tolerance) -> list[Result]:
  """One Result per array of `io`: an input, a comparison, or a failure if unknown.

  Nothing in a fixture file is silently skipped, so a new reference array makes
  the command fail until a comparison for it exists.
  """
  results = []
  for name in io:
    label = f"{prefix}/{name}"
    if name in inputs:
      results.append(Result(label, 0.0, "input", True))
    elif name not in ours:
      results.append(Result(label, float("nan"), "no comparison known", False))
    else:
      results.append(compare(label, ours[name], io[name], tolerance(name, io[name])))
  return results


def missing(pattern: str) -> list[Result]:
  return [Result(pattern, float("nan"), "no fixtures", False)]
