"""`parity vript-hal` passes on the official fixtures and fails on perturbed ones."""

import json
import os
import shutil

from vwt_jax.tools import parity


def test_parity_passes_on_fixtures(fixtures_dir, capsys, monkeypatch):
  monkeypatch.delenv("VWT_MPNET_DIR", raising=False)
  assert parity.main(["vript-hal", os.path.join(fixtures_dir, "vript")]) == 0
  out = capsys.readouterr().out
  assert "comparing minilm_sm only" in out
  assert "hal/minilm_sm/custom-short-gt-recall-gt-1/recall  0.000e+00  atol=1e-06  OK" in out
  assert "hal/minilm_sm/q7Wm2xYv8Ra_0-Scene-001/error" in out
  assert "/aggregate/official_HALScorer_compute_scores_on_single_gt_nonfailing_cases/" \
         "Hallucination F1" in out
  assert "0 failed -- all OK" in out


def test_perturbed_fixture_fails(fixtures_dir, tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("VWT_MPNET_DIR", raising=False)
  src = os.path.join(fixtures_dir, "vript")
  shutil.copy(os.path.join(src, "hal_aggregate.json"), tmp_path)
  with open(os.path.join(src, "hal_cases.jsonl")) as f:
    cases = [json.loads(line) for line in f]
  by_id = {c["id"]: c["official"]["minilm_sm"] for c in cases}
  by_id["kTn3bC7xQ2w-Scene-002"]["matched_pred_words"].append("unicorn")
  by_id["kTn3bC7xQ2w-Scene-003"]["precision"] += 1e-3
  by_id["Zp0-f9LmA_4-Scene-001"]["pred_word_max_sim"]["video"]["max_sim"] += 1e-3
  by_id["q7Wm2xYv8Ra_0-Scene-001"]["error"] = None
  by_id["custom-two-gt-captions"]["mystery"] = 1
  with open(tmp_path / "hal_cases.jsonl", "w") as f:
    f.writelines(json.dumps(c) + "\n" for c in cases)
  aggregate_path = tmp_path / "hal_aggregate.json"
  aggregates = json.loads(aggregate_path.read_text())
  printed = aggregates["aggregate"]["minilm_sm"][
      "official_HALScorer_compute_scores_on_single_gt_nonfailing_cases"]
  printed["Hallucination Recall"] += 0.01
  aggregate_path.write_text(json.dumps(aggregates))

  assert parity.main(["vript-hal", str(tmp_path)]) == 1
  failed = [line.split("  ")[0] for line in capsys.readouterr().out.splitlines()
            if line.endswith("FAIL")]
  assert failed == [
      "hal/minilm_sm/kTn3bC7xQ2w-Scene-002/matched_pred_words",
      "hal/minilm_sm/kTn3bC7xQ2w-Scene-003/precision",
      "hal/minilm_sm/Zp0-f9LmA_4-Scene-001/pred_word_max_sim",
      # Without the official error its P/R/F1 are null, and ours is flagged.
      "hal/minilm_sm/q7Wm2xYv8Ra_0-Scene-001/precision",
      "hal/minilm_sm/q7Wm2xYv8Ra_0-Scene-001/recall",
      "hal/minilm_sm/q7Wm2xYv8Ra_0-Scene-001/f1",
      "hal/minilm_sm/q7Wm2xYv8Ra_0-Scene-001/error",
      "hal/minilm_sm/custom-two-gt-captions/mystery",
      "hal/minilm_sm/aggregate/official_HALScorer_compute_scores_on_single_gt_nonfailing_cases/"
      "Hallucination Recall",
  ]


def test_missing_fixture_fails(tmp_path):
  assert parity.main(["vript-hal", str(tmp_path)]) == 1
