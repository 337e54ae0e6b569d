"""Classification accuracy of samples: the classifier, the per-class tally, the command."""

import json

import numpy as np
import pytest

from vwt_jax.data import pipeline
from vwt_jax.data import synthetic_shapes
from vwt_jax.evaluation import class_accuracy
from vwt_jax.tools import class_accuracy as class_accuracy_tool

STEPS = 300


def test_per_class_accuracy_counts_each_class():
  labels = np.array([0, 0, 1, 1, 1, 3])
  predictions = np.array([0, 1, 1, 1, 0, 3])
  overall, per_class = class_accuracy.per_class_accuracy(predictions, labels, 4)
  # Quotients of counts, rounded once (2^-53); a miscount would move them by >= 1/6.
  assert overall == pytest.approx(4 / 6)
  assert per_class == [0.5, pytest.approx(2 / 3), None, 1.0]
  with pytest.raises(ValueError, match="no images"):
    class_accuracy.per_class_accuracy(predictions[:0], labels[:0], 4)


def test_train_checks_its_inputs():
  with pytest.raises(ValueError, match="uint8"):
    class_accuracy.train(np.zeros((4, 8, 8, 3), np.float32), np.zeros(4), 2)
  with pytest.raises(ValueError, match="3 labels for 4 images"):
    class_accuracy.train(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(3), 2)


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
  """A run folder whose config.json names 32-px upright shapes (1000 train / 100 validation)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  synthetic_shapes.prepare_synthetic_shapes(str(data_dir), resolution=32, num_train=1000,
                                            num_validation=100, upright=True)
  config = pipeline.default_data_config()
  config.data_dir = str(data_dir)
  config.image_size = 32
  config.synthetic.update(dict(resolution=32, num_train=1000, num_validation=100,
                               upright=True))
  run = tmp_path_factory.mktemp("run")
  (run / "config.json").write_text(json.dumps({"data": config.to_dict()}))
  return run, config


def _write_samples(path, images, labels):
  np.savez(path, arr_0=images, arr_1=labels)
  return str(path)


def test_command_scores_real_images_as_samples_and_wrong_labels_low(shapes_run, tmp_path,
                                                                    capsys, monkeypatch):
  run, config = shapes_run
  # Both commands train on the same images with the same settings and seed,
  # which gives one classifier: the second reuses the first's.
  train, trained = class_accuracy.train, {}

  def train_once(images, labels, num_classes, settings):
    if not trained:
      trained.update(inputs=(images, labels, num_classes, settings),
                     result=train(images, labels, num_classes, settings))
    first = trained["inputs"]
    np.testing.assert_array_equal(images, first[0])
    np.testing.assert_array_equal(labels, first[1])
    assert (num_classes, settings) == first[2:]
    return trained["result"]

  monkeypatch.setattr(class_accuracy, "train", train_once)
  images, labels = class_accuracy_tool.read_split(config, "validation", 32)
  right = _write_samples(tmp_path / "right.npz", images, labels)
  # Every image labelled as the next class: a generator that draws the wrong shape.
  wrong = _write_samples(tmp_path / "wrong.npz", images, (labels + 1) % 10)
  summary = tmp_path / "summary.txt"
  summary.write_text("generator run\n")
  args = ["--data_from", str(run), "--steps", str(STEPS), "--batch_size", "32"]
  class_accuracy_tool.main(["--samples", right, "--output", str(tmp_path / "right.json"),
                            "--summary", str(summary), *args])
  result = json.loads((tmp_path / "right.json").read_text())
  real = result["real_validation"]["accuracy"]
  # The "samples" are the validation images themselves: the same predictions.
  assert result["samples_accuracy"]["accuracy"] == real
  assert result["samples_accuracy"]["per_class"] == result["real_validation"]["per_class"]
  # 300 steps on 1000 upright images tell the shapes apart (0.94 here;
  # chance is 0.1).
  assert real >= 0.8, result
  assert result["classifier"]["train_images"] == 1000
  printed = capsys.readouterr().out
  assert "crescent" in printed and "all" in printed
  text = summary.read_text()
  assert text.startswith("generator run\n") and "Classification accuracy" in text

  class_accuracy_tool.main(["--samples", wrong, "--output", str(tmp_path / "wrong.json"),
                            *args])
  wrong_result = json.loads((tmp_path / "wrong.json").read_text())
  # A prediction is right for at most one of the two labels of an image (1e-9:
  # float64 rounding of the two fractions).
  assert wrong_result["samples_accuracy"]["accuracy"] <= 1 - real + 1e-9


def test_command_rejects_bad_samples(shapes_run, tmp_path):
  run, _ = shapes_run
  images = np.zeros((4, 32, 32, 3), np.uint8)
  no_labels = tmp_path / "no_labels.npz"
  np.savez(no_labels, arr_0=images)
  with pytest.raises(ValueError, match=r"no_labels.npz: expected arr_0 .* and arr_1"):
    class_accuracy_tool.main(["--samples", str(no_labels), "--data_from", str(run)])
  out_of_range = _write_samples(tmp_path / "classes.npz", images, np.array([0, 1, 2, 10]))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
    class_accuracy_tool.main(["--samples", out_of_range, "--data_from", str(run)])
  with pytest.raises(SystemExit):
    class_accuracy_tool.main(["--samples", out_of_range, "--data_from", str(tmp_path)])
