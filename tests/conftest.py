"""Every test sees 8 fake CPU devices so the sharded code path is the real one."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402  (must come after XLA_FLAGS)
import orbax.checkpoint as ocp  # noqa: E402
from orbax.checkpoint._src.metadata import array_metadata_store  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Partitionable threefry makes every jitted random init compile several times
# slower on CPU; tests compare values, never the random stream itself.
jax.config.update("jax_threefry_partitionable", False)

# Lets test modules import `helpers` wherever they live.
sys.path.insert(0, os.path.dirname(__file__))

# Orbax has each replica of a replicated array slice out its part on device
# and write it. For a tiny train state on 8 CPU devices that slicing is most
# of a checkpoint save (thousands of small dispatches); arrays under 1 MiB a
# replica are written whole by one replica instead. The saved values are the same.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=1 << 20,
        array_metadata_store=array_metadata_store.Store()),
    override=True)


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  # Many tests compile the same tiny programs: a trainer config run several
  # times (crash, resume, init-from), the same tiny model in several files,
  # the commands that tests start as processes. One persistent cache for the
  # session, shared by the xdist workers and (through the environment) the
  # processes they start, turns each recompile into a disk read. A size limit
  # makes JAX lock the cache folder, so two processes never read a half-written
  # entry. Fresh per session, so nothing stale carries over.
  base = tmp_path_factory.getbasetemp()
  # Under xdist every worker's base is one folder of the session's.
  session_dir = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  settings = {"jax_compilation_cache_dir": str(session_dir / "xla_cache"),
              "jax_persistent_cache_min_compile_time_secs": 0.5,
              "jax_compilation_cache_max_size": 8 << 30}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)
  yield
  for name in settings:
    os.environ.pop(name.upper(), None)
  jax.config.update("jax_compilation_cache_dir", None)


# Parity fixtures made with the official code (tests/fixtures/README.md).
# VWT_FIXTURES points the suite at another set of the same layout.
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="session")
def fixtures_dir():
  path = os.path.abspath(os.environ.get("VWT_FIXTURES", FIXTURES))
  if not os.path.isdir(path):
    pytest.fail(f"VWT_FIXTURES={path} is not a folder; it should hold titok/, llamagen/, "
                "eval/ and vript/ as tests/fixtures does")
  return path


@pytest.fixture
def bucket():
  """gs:// served from memory for one test: {'bucket/key': bytes}."""
  import helpers  # pylint: disable=g-import-not-at-top
  with helpers.fake_gcs() as objects:
    yield objects


@pytest.fixture
def array_record_on_bucket(bucket, tmp_path, monkeypatch):
  """ArrayRecord's reader opens the gs:// shards of `bucket`."""
  import helpers  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  reader = helpers.ArrayRecordOnBucket(bucket, str(tmp_path / "array_record_scratch"))
  monkeypatch.setattr(array_record_data_source, "array_record_module", reader)
  return reader


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
  """One small synthetic-shapes dataset shared by the whole session."""
  return tmp_path_factory.mktemp("tfds")


# Files whose tests train for more than a few seconds, start processes or
# execute notebooks: marked `slow`, which `make test-fast` leaves out.
SLOW = ("training/", "colabs/", "benchmarks/", "evaluation/test_class_accuracy.py",
        "evaluation/test_sample_eval.py", "models/test_attention_kinds.py",
        "conversion/test_sentence_transformers_conversion.py",
        "tools/test_parity_llamagen.py", "tools/test_parity_titok.py")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: trains for long, starts processes or runs "
                          "notebooks (left out by `make test-fast`)")


def pytest_collection_modifyitems(items):
  tests_dir = os.path.dirname(__file__)
  for item in items:
    path = os.path.relpath(str(item.path), tests_dir)
    if path.startswith(SLOW):
      item.add_marker(pytest.mark.slow)
  # The trainer files run minutes each: started first, they leave the many
  # short files to balance the xdist workers at the end (a stable sort keeps
  # every file's own order).
  items.sort(key=lambda item: item.path.parent.name != "training")
