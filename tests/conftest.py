"""Test set-up: 8 simulated CPU devices, strict rank promotion, a data cache per test worker."""
import os
import tempfile

import pytest

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")
# Generated data sets (TFDS expert sets) are cached per pytest-xdist worker, so two workers never
# build the same TFDS data set in one folder at once; the folders persist between runs.
os.environ.setdefault(
    "NRC_JAX_DATA_DIR",
    os.path.join(tempfile.gettempdir(), f"nrc_jax_test_data_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"))


@pytest.fixture
def traced_at_most(monkeypatch):
    """`limit(cls, name, n)`: the method `cls.name` may be traced at most n times in this test
    (`chex.assert_max_traces`); compiled programs are built anew (an empty `learner.cached_program` cache)."""
    import chex

    from nrc_jax.engine import learner

    chex.clear_trace_counter()
    monkeypatch.setattr(learner, "_PROGRAMS", {})

    def limit(cls, name: str, n: int) -> None:
        monkeypatch.setattr(cls, name, chex.assert_max_traces(getattr(cls, name), n=n))
    return limit
