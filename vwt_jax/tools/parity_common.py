"""What every parity kind shares: fixture loading, a per-array result and the comparison rule."""

import dataclasses
import glob
import json
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from vwt_jax.conversion import torch_state

# Suggested tolerances of the fixture READMEs (float32, highest matmul precision).
ACTIVATION_TOL = dict(atol=1e-4, rtol=1e-4)
PIXEL_TOL = dict(atol=2e-4, rtol=0.0)
LOSS_TOL = dict(atol=1e-7, rtol=1e-5)
EXACT = dict(atol=0.0, rtol=0.0)

# (array name, reference array) -> tolerance dict, e.g. `ACTIVATION_TOL`.
Tolerance = Callable[[str, np.ndarray], dict]


@dataclasses.dataclass
class Result:
  """One compared (or declared) item: its error, the rule it was held to, and the verdict."""
  name: str
  max_abs_err: float
  tol: str
  ok: bool

  @classmethod
  def failed(cls, name: str, why: str) -> "Result":
    """A failure without an error value: nothing could be compared."""
    return cls(name, float("nan"), why, False)

  @classmethod
  def declared(cls, name: str, what: str) -> "Result":
    """An item that is not compared by design (an input, a description), named so it shows."""
    return cls(name, 0.0, what, True)

  def line(self) -> str:
    return f"{self.name}  {self.max_abs_err:.3e}  {self.tol}  {'OK' if self.ok else 'FAIL'}"


def compare(name: str, ours, ref, tol: dict) -> Result:
  ours, ref = np.asarray(ours), np.asarray(ref)
  if ours.shape != ref.shape:
    return Result(name, float("inf"), f"shape {ours.shape} vs {ref.shape}", False)
  diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
  err = float(np.max(diff)) if diff.size else 0.0
  if tol is EXACT:
    return Result(name, err, "exact", bool(np.all(ours == ref)))
  ok = bool(np.all(diff <= tol["atol"] + tol["rtol"] * np.abs(ref))) and np.isfinite(err)
  return Result(name, err, f"atol={tol['atol']:g},rtol={tol['rtol']:g}", ok)


def compare_io(prefix: str, io, ours: dict, inputs: Sequence[str] = (),
               tolerance: Optional[Tolerance] = None) -> list[Result]:
  """One Result per array of `io`: an input, a comparison, or a failure if unknown.

  Nothing in a fixture file is silently skipped, so a new reference array makes
  the command fail until a comparison for it exists. `tolerance` is only
  consulted for arrays in `ours`, so it may be left out when `ours` is empty.
  """
  results = []
  for name in io:
    label = f"{prefix}/{name}"
    if name in inputs:
      results.append(Result.declared(label, "input"))
    elif name not in ours:
      results.append(Result.failed(label, "no comparison known"))
    else:
      results.append(compare(label, ours[name], io[name], tolerance(name, io[name])))
  return results


def tolerance_table(default: dict, scalar: Optional[dict] = None, **by_name: dict) -> Tolerance:
  """EXACT for integer references, else `by_name[name]`, else `scalar` if 0-d, else `default`."""

  def tolerance(name: str, ref: np.ndarray) -> dict:
    if np.issubdtype(ref.dtype, np.integer):
      return EXACT
    if name in by_name:
      return by_name[name]
    return scalar if scalar is not None and ref.ndim == 0 else default

  return tolerance


def missing(pattern: str) -> list[Result]:
  return [Result.failed(pattern, "no fixtures")]


def missing_files(fixture_dir: str, prefix: str, names: Sequence[str]) -> list[Result]:
  """`missing` naming `fixture_dir/{prefix}{names}` unless every such file exists, else []."""
  if all(os.path.exists(os.path.join(fixture_dir, prefix + name)) for name in names):
    return []
  return missing(os.path.join(fixture_dir, f"{prefix}{{{','.join(names)}}}"))


def load_json(fixture_dir: str, name: str) -> Any:
  with open(os.path.join(fixture_dir, name), encoding="utf-8") as f:
    return json.load(f)


def load_arrays(fixture_dir: str, name: str) -> dict[str, np.ndarray]:
  """The arrays of `fixture_dir/name` (`.npz`), by name in file order."""
  return torch_state.load_state_dict(os.path.join(fixture_dir, name))


def run_stems(fixture_dir: str, prefix: str,
              per_stem: Callable[[str, str], list[Result]]) -> list[Result]:
  """`per_stem(fixture_dir, stem)` for every `{prefix}_*_config.json` stem, in name order."""
  paths = sorted(glob.glob(os.path.join(fixture_dir, f"{prefix}_*_config.json")))
  if not paths:
    return missing(f"{fixture_dir}/{prefix}_*_config.json")
  results = []
  for path in paths:
    results += per_stem(fixture_dir, os.path.basename(path)[:-len("_config.json")])
  return results


def nchw(x) -> np.ndarray:
  """Our channels-last (B,H,W,C) -> the official (B,C,H,W)."""
  return np.asarray(x).transpose(0, 3, 1, 2)
