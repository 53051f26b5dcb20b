import atexit
import os
import shutil
import tempfile

# Eight fake CPU devices so sharding tests run anywhere; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

# One persistent compilation cache per session, shared through the environment with xdist workers
# and the processes tests start (CLI runs, killed runs, distributed workers): they compile the
# same steps again, and on CPU compiling is most of a tiny model's time. Every entry is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="longvid-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

from absl import flags  # noqa: E402

# grain worker processes read absl flags; mark them parsed for pytest.
flags.FLAGS.mark_as_parsed()

# The longest files, longest first: the README's test command (`-n 2 --dist loadfile
# --no-loadscope-reorder`) hands whole files to two workers in collection order, and starting
# these first lets both finish at about the same time. Other files keep their order after them.
LONGEST_FIRST = ("test_demo.py", "test_reducer_recipes.py", "test_runner.py", "test_sharding.py",
                 "test_distributed.py", "test_gguf.py", "test_export.py", "test_svc.py",
                 "test_transnetv2.py", "test_efficientnet.py", "test_faults.py", "test_eval.py",
                 "test_aot.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file
