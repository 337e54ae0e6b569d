"""The jax.profiler window of the training loop (`config.profile_*`)."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from helpers import load_config, tiny_titok_config, write_class_codes
from vwt_jax.core import progress
from vwt_jax.training import generator


@pytest.fixture(scope="module")
def code_dir(shapes_dir, tmp_path_factory):
  # The run never evaluates, so no tokenizer run is needed to decode samples.
  return write_class_codes(str(tmp_path_factory.mktemp("codes")), "",
                           tiny_titok_config(shapes_dir), num_classes=4, seq_len=8, vocab=64)


def _traces(directory):
  return glob.glob(os.path.join(directory, "plugins", "profile", "*", "*.xplane.pb"))


def test_window_traces_its_steps_and_stops_after_the_last(tmp_path):
  directory = str(tmp_path / "trace")
  step_fn = jax.jit(lambda x: jnp.sin(x) @ x)
  x = jnp.ones((64, 64))
  with progress.ProfileWindow(directory, start_step=2, num_steps=2) as window:
    for step in range(1, 6):
      window.before_step(step)
      assert window.active == (step in (2, 3))
      x = step_fn(x)
      window.after_step(step, x)
      if step == 3:
        # Stopped right after the window, while the loop goes on.
        assert not window.active and len(_traces(directory)) == 1
  assert window.traced_steps == 2 and len(_traces(directory)) == 1


def test_window_not_reached_or_off_traces_nothing(tmp_path):
  for start, num in ((10, 3), (1, 0)):
    with progress.ProfileWindow(str(tmp_path / f"{start}_{num}"), start, num) as window:
      for step in range(1, 4):
        window.before_step(step)
        window.after_step(step, None)
    assert window.traced_steps == 0 and not os.path.exists(tmp_path / f"{start}_{num}")
  with pytest.raises(ValueError, match="start_step=0, num_steps=2"):
    progress.ProfileWindow(str(tmp_path), 0, 2)


def test_training_run_ending_inside_the_window_writes_the_trace(code_dir, tmp_path):
  config = load_config("llamagen.py", "tiny")
  config.model.update(dict(n_layer=1, n_head=2, dim=32))
  config.data.update(dict(dir=code_dir, num_workers=0))
  # Steps 2-6 of a 3-step run: the loop must close the trace when it ends.
  config.update(dict(total_steps=3, global_batch_size=8, eval_every=0, checkpoint_every=3,
                     async_checkpointing=False, profile_start_step=2, profile_num_steps=5))
  result = generator.train(config, str(tmp_path))
  assert result["step"] == 3
  traces = _traces(str(tmp_path / "profile" / "process_0"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  # No trace is left running: a new one can start.
  jax.profiler.start_trace(str(tmp_path / "after"))
  jax.profiler.stop_trace()
