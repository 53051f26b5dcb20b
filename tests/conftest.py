import os

# Eight fake CPU devices so sharding tests run anywhere; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from absl import flags  # noqa: E402

# grain worker processes read absl flags; mark them parsed for pytest.
flags.FLAGS.mark_as_parsed()
