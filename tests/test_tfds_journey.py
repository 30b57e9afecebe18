"""The expert sets as plain TFDS data sets: after `import nrc_jax.data`, `tfds.data_source(name)`
gives one record per time step at the registry's default settings, the same rows nrc_jax trains on;
nrc_jax's own loads print none of TFDS's chatter."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_data_source_by_name_after_importing_nrc_jax_data(tmp_path):
    """The README's snippet, in a fresh process with TFDS's own default data_dir (TFDS_DATA_DIR)."""
    script = ("import nrc_jax.data, tensorflow_datasets as tfds\n"
              "train = tfds.data_source('nrc_swimmer_expert', split='train')\n"
              "print(len(train), train[0]['observation'].shape, train[0]['action'].shape, train[3]['step'])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TFDS_DATA_DIR": str(tmp_path / "tfds")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].split() == ["1000", "(8,)", "(2,)", "3"]  # after TFDS's own banner


def test_default_config_rows_are_the_rows_nrc_jax_trains_on():
    import tensorflow_datasets as tfds

    from nrc_jax.data import default_data_config, load_dataset

    data_dir = os.environ["NRC_JAX_DATA_DIR"]  # the loader's cache (tests/conftest.py)
    sources = tfds.data_source("nrc_reacher_expert", data_dir=data_dir)
    config = default_data_config()
    config.name = "reacher"
    data = load_dataset(config)
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        rows = sources[split].__getitems__(list(range(len(sources[split]))))
        np.testing.assert_array_equal(np.stack([r["observation"] for r in rows]), x)
        np.testing.assert_array_equal(np.stack([r["action"] for r in rows]), y)
        episodes = np.array([r["episode"] for r in rows])
        assert episodes[0] == 0 and np.all(np.diff(episodes) >= 0)


def test_loading_prints_nothing_from_tfds(tmp_path):
    script = ("from nrc_jax.data import default_data_config, load_dataset\n"
              f"c = default_data_config(); c.name = 'swimmer'; c.train_size = 300; c.cache_dir = {str(tmp_path)!r}\n"
              "load_dataset(c); load_dataset(c)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    for noise in ("Using custom data configuration", "Downloading and preparing", "examples/s", "Shuffling"):
        assert noise not in done.stderr


def test_tfds_load_with_tensorflow(tmp_path):
    """tfds.load returns tf.data, so it needs TensorFlow (the `[tf]` extra) and TFRecord files."""
    pytest.importorskip("tensorflow")
    import tensorflow_datasets as tfds

    import nrc_jax.data  # noqa: F401

    ds = tfds.load("nrc_swimmer_expert", split="train", data_dir=str(tmp_path),
                   builder_kwargs={"file_format": "tfrecord"})
    first = next(iter(tfds.as_numpy(ds)))
    assert first["observation"].shape == (8,)


def test_a_missing_expert_file_does_not_break_importing_the_builders():
    import dataclasses

    from nrc_jax.data.mujoco import envs, tfds_builders

    spec = dataclasses.replace(envs.ENV_SPECS["swimmer"], name="no_such_expert")
    assert tfds_builders.expert_digest(spec) == "missing"
    assert tfds_builders.default_config(spec).name.endswith("_expertmissing_steps")
