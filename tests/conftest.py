"""Test set-up: 8 simulated CPU devices, strict rank promotion, a data cache per test worker."""
import os
import tempfile

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")
# Generated data sets (TFDS expert sets) are cached per pytest-xdist worker, so two workers never
# build the same TFDS data set in one folder at once; the folders persist between runs.
os.environ.setdefault(
    "NRC_JAX_DATA_DIR",
    os.path.join(tempfile.gettempdir(), f"nrc_jax_test_data_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"))
