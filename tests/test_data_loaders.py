"""Loaders on tiny files in the real layouts, target transforms, batch streaming, bad input."""
import importlib.util
import os
import threading

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrc_jax.data import (KNOWN_DATASETS, PATH_DATASETS, RegressionData, default_data_config, load_dataset)
from nrc_jax.data import batches, d4rl, transforms
from nrc_jax.data.base import ImageSource, IMAGENET_MEAN, IMAGENET_STD, table1_row
from nrc_jax.errors import ConfigError, DataError

import data_fixtures as fx


def config(name, path="", **fields):
    cfg = default_data_config()
    cfg.name, cfg.path = name, str(path)
    for key, value in fields.items():
        cfg[key] = value
    return cfg


def unit_image(x):
    """Undo the default ImageNet normalization -> values in [0, 1]."""
    return x * IMAGENET_STD + IMAGENET_MEAN


# ---------------------------------------------------------------- target transforms

@pytest.fixture
def correlated_targets():
    rng = np.random.default_rng(0)
    mixing = np.array([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [-0.3, 0.2, 0.1]])
    return rng.normal(size=(500, 3)) @ mixing.T + np.array([3.0, -1.0, 10.0])


@pytest.mark.parametrize("kind", transforms.TRANSFORMS)
def test_transform_inverse_recovers_targets(kind, correlated_targets):
    t = transforms.fit_transform(kind, correlated_targets)
    z = t.forward(correlated_targets)
    np.testing.assert_allclose(t.inverse(z), correlated_targets, rtol=1e-10, atol=1e-10)
    restored = transforms.TargetTransform.from_dict(t.to_dict())
    np.testing.assert_allclose(restored.forward(correlated_targets), z)


def test_transform_statistics(correlated_targets):
    y = correlated_targets
    z = transforms.fit_transform("zca", y).forward(y)
    zc = z - z.mean(0)
    np.testing.assert_allclose(zc.T @ zc / y.shape[0], np.eye(3), atol=1e-6)
    # ZCA is the symmetric whitening: it keeps the whitened targets closest to the centered ones.
    whiten = transforms.fit_transform("zca", y).matrix
    np.testing.assert_allclose(whiten, whiten.T, atol=1e-12)
    z = transforms.fit_transform("standardize", y).forward(y)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-10)
    z = transforms.fit_transform("minmax", y).forward(y)
    np.testing.assert_allclose(z.min(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.max(0), 1, atol=1e-12)
    np.testing.assert_allclose(transforms.fit_transform("center", y).forward(y).mean(0), 0, atol=1e-10)
    np.testing.assert_array_equal(transforms.fit_transform("none", y).forward(y), y)


def test_transform_works_on_jax_arrays(correlated_targets):
    t = transforms.fit_transform("zca", correlated_targets)
    with jax.enable_x64(True):
        y = jnp.asarray(correlated_targets)
        out = jax.jit(lambda v: t.inverse(t.forward(v)))(y)
        np.testing.assert_allclose(np.asarray(out), correlated_targets, rtol=1e-9, atol=1e-9)


def test_transform_errors():
    with pytest.raises(ConfigError, match="target_transform='whiten'.*zca"):
        transforms.fit_transform("whiten", np.ones((4, 2)))
    y = np.stack([np.arange(5.0), np.full(5, 3.0)], 1)
    with pytest.raises(DataError, match=r"dimension\(s\) \[1\] are constant"):
        transforms.fit_transform("standardize", y, "toy")


def test_load_dataset_applies_transform(tmp_path):
    arrays = fx.write_npz(tmp_path / "d.npz")
    data = load_dataset(config("npz", tmp_path / "d.npz", target_transform="standardize"))
    assert data.info["target_transform"] == "standardize"
    np.testing.assert_allclose(data.y_train.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(data.transform.inverse(data.y_test.astype(np.float64)), arrays["y_test"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="data.target_transform='log'"):
        load_dataset(config("npz", tmp_path / "d.npz", target_transform="log"))
    assert load_dataset(config("npz", tmp_path / "d.npz")).transform.kind == "none"


# ---------------------------------------------------------------- registry, npz, Table 1

def test_unknown_name_lists_known():
    with pytest.raises(DataError) as e:
        load_dataset(config("imagenet"))
    for name in ("npz", "d4rl", "minari", "carla", "utkface", "sgemm", "synthetic_images"):
        assert name in str(e.value) and name in KNOWN_DATASETS
    assert set(PATH_DATASETS) <= set(KNOWN_DATASETS)


def test_data_path_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    fx.write_npz(tmp_path / "d.npz")
    assert load_dataset(config("npz", "~/d.npz")).info["path"] == str(tmp_path / "d.npz")


def test_npz_and_table1_row(tmp_path):
    arrays = fx.write_npz(tmp_path / "d.npz", n=3)
    data = load_dataset(config("npz", tmp_path / "d.npz"))
    assert data.x_train.dtype == np.float32 and not data.streamed
    row = table1_row(data)
    y = arrays["y_train"]
    eig = np.linalg.eigvalsh(np.cov(y, rowvar=False, bias=True))
    assert row["train_size"] == 40 and row["test_size"] == 10 and row["input_shape"] == [5]
    np.testing.assert_allclose([row["lambda_min"], row["lambda_max"]], [eig[0], eig[-1]], rtol=1e-5)
    corr = np.corrcoef(y, rowvar=False)
    np.testing.assert_allclose(row["target_correlation"], [corr[0, 1], corr[0, 2], corr[1, 2]], rtol=1e-5)


def test_table1_row_matches_metrics_target_stats(correlated_targets):
    metrics = pytest.importorskip("nrc_jax.core.metrics")
    if not hasattr(metrics, "target_stats"):
        pytest.skip("nrc_jax.core.metrics.target_stats not written yet")
    y = correlated_targets
    data = RegressionData("toy", np.zeros((len(y), 1)), y, np.zeros((2, 1)), y[:2])
    row = table1_row(data)
    with jax.enable_x64(True):
        stats = metrics.target_stats(jnp.asarray(y))
        np.testing.assert_allclose([row["lambda_min"], row["lambda_max"]],
                                   [float(stats["lambda_min"]), float(stats["lambda_max"])], rtol=1e-10)
        corr = np.asarray(stats["correlation"])
    np.testing.assert_allclose(row["target_correlation"], [corr[0, 1], corr[0, 2], corr[1, 2]], rtol=1e-10)


@pytest.mark.parametrize("bad", ["nan_x", "inf_y", "rows", "missing_key", "not_npz"])
def test_npz_bad_input(tmp_path, bad):
    path = tmp_path / "bad.npz"
    arrays = {"x_train": np.ones((6, 2)), "y_train": np.ones((6, 1)), "x_test": np.ones((2, 2)), "y_test": np.ones((2, 1))}
    if bad == "nan_x":
        arrays["x_train"][3, 1] = np.nan
    elif bad == "inf_y":
        arrays["y_test"][1, 0] = np.inf
    elif bad == "rows":
        arrays["y_train"] = np.ones((5, 1))
    elif bad == "missing_key":
        del arrays["y_test"]
    if bad == "not_npz":
        path.write_text("hello")
    else:
        np.savez(path, **arrays)
    expected = {"nan_x": "non-finite.*row 3", "inf_y": "non-finite", "rows": "6 rows but targets have 5 rows",
                "missing_key": "lacks arrays", "not_npz": "cannot read"}[bad]
    with pytest.raises(DataError, match=expected) as e:
        load_dataset(config("npz", path))
    assert "'npz'" in str(e.value) and str(path) in str(e.value)


# ---------------------------------------------------------------- D4RL

EPISODES = [5, 7, 4, 6, 8]  # ends 5, 12, 16, 22, 30


def test_d4rl_hdf5_splits_by_whole_episodes(tmp_path):
    arrays = fx.write_d4rl_hdf5(tmp_path / "hopper_expert-v2.hdf5", EPISODES)
    data = load_dataset(config("d4rl", tmp_path / "hopper_expert-v2.hdf5", train_size=10, test_size=4))
    np.testing.assert_array_equal(data.x_train, arrays["observations"][:10])
    np.testing.assert_array_equal(data.y_train, arrays["actions"][:10])
    # Episode 1 (steps 5..11) is cut for training, so the test split starts at episode 2 (step 12).
    np.testing.assert_array_equal(data.x_test, arrays["observations"][12:16])
    np.testing.assert_array_equal(data.y_test, arrays["actions"][12:16])
    assert data.target_dim == 3 and data.input_shape == (11,)
    assert data.info["episodes_train"] == 2 and data.info["episodes_test"] == 1


def test_d4rl_default_sizes_and_timeouts(tmp_path):
    arrays = fx.write_d4rl_hdf5(tmp_path / "d.hdf5", EPISODES)
    data = load_dataset(config("d4rl", tmp_path / "d.hdf5"))
    # Most whole episodes leaving >= 20%: 4 episodes (22 steps) train, the last 8 test.
    assert (data.train_size, data.test_size) == (22, 8)
    np.testing.assert_array_equal(data.x_test, arrays["observations"][22:])
    # A timeout ends an episode just like a terminal: episode 1 ends by timeout at step 11.
    data = load_dataset(config("d4rl", tmp_path / "d.hdf5", train_size=6, test_size=3))
    np.testing.assert_array_equal(data.x_test, arrays["observations"][12:15])
    # Old files without timeouts: episodes end only at terminals (0 and 2), so train 6 -> test from 16.
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        del f["timeouts"]
    data = load_dataset(config("d4rl", tmp_path / "d.hdf5", train_size=6, test_size=3))
    np.testing.assert_array_equal(data.x_test, arrays["observations"][16:19])


@pytest.mark.parametrize("bad", ["missing_file", "empty_path", "missing_key", "rows", "nan", "too_big", "not_hdf5"])
def test_d4rl_bad_input(tmp_path, bad):
    path = tmp_path / "d.hdf5"
    fx.write_d4rl_hdf5(path, EPISODES)
    fields = {}
    with h5py.File(path, "a") as f:
        if bad == "missing_key":
            del f["actions"]
        elif bad == "rows":
            data = f["actions"][:-1]
            del f["actions"]
            f["actions"] = data
        elif bad == "nan":
            f["observations"][7, 2] = np.nan
    if bad == "missing_file":
        path = tmp_path / "nope.hdf5"
    elif bad == "empty_path":
        path = ""
    elif bad == "too_big":
        fields = {"train_size": 25, "test_size": 5}
    elif bad == "not_hdf5":
        path.write_text("not hdf5")
    expected = {"missing_file": "no such file", "empty_path": "data.path is empty", "missing_key": r"lacks \['actions'\]",
                "rows": "one row per step", "nan": "non-finite.*row 7", "too_big": "whole later episodes remain",
                "not_hdf5": "cannot read .* as HDF5"}[bad]
    with pytest.raises(DataError, match=expected) as e:
        load_dataset(config("d4rl", path, **fields))
    assert "'d4rl'" in str(e.value) and str(path) in str(e.value)


def test_rlds_episodes_to_steps():
    rng = np.random.default_rng(1)
    episodes = [{"observation": rng.normal(size=(t, 11)), "action": rng.normal(size=(t, 3)),
                 "is_first": np.arange(t) == 0, "is_last": np.arange(t) == t - 1,
                 "is_terminal": np.zeros(t, bool)} for t in (3, 5)]
    obs, act, ends = d4rl.rlds_episodes_to_steps("d4rl_tfds", "x", iter(episodes))
    np.testing.assert_array_equal(ends, [3, 8])
    np.testing.assert_array_equal(obs[3:], episodes[1]["observation"])
    with pytest.raises(DataError, match="lack \\['action'\\]"):
        d4rl.rlds_episodes_to_steps("d4rl_tfds", "x", [{"observation": np.ones((2, 1))}])


HAS_TF = importlib.util.find_spec("tensorflow") is not None


@pytest.mark.skipif(HAS_TF, reason="checks the message shown when TensorFlow is absent")
def test_d4rl_tfds_without_tensorflow_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match=r"pip install '\.\[tf\]'"):
        load_dataset(config("d4rl_tfds", tmp_path))
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(config("d4rl_tfds", tmp_path / "missing"))


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow not installed (optional extra: pip install '.[tf]')")
def test_d4rl_tfds_reads_rlds_episodes(tmp_path):
    import tensorflow_datasets as tfds

    lengths = [4, 6, 5]
    rng = np.random.default_rng(0)
    episodes = [{"steps": {"observation": rng.normal(size=(t, 11)).astype(np.float32),
                           "action": rng.normal(size=(t, 3)).astype(np.float32),
                           "is_first": np.arange(t) == 0, "is_last": np.arange(t) == t - 1,
                           "is_terminal": np.zeros(t, bool)}} for t in lengths]

    class D4rlMujocoHopperTiny(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.2.0")

        def _info(self):
            steps = tfds.features.Dataset({
                "observation": tfds.features.Tensor(shape=(11,), dtype=np.float32),
                "action": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_})
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"steps": steps}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, ep in enumerate(episodes):
                yield i, {"steps": [{k: v[j] for k, v in ep["steps"].items()} for j in range(len(ep["steps"]["action"]))]}

    builder = D4rlMujocoHopperTiny(data_dir=str(tmp_path))
    builder.download_and_prepare()
    data = load_dataset(config("d4rl_tfds", builder.data_dir, train_size=5, test_size=4))
    obs = np.concatenate([ep["steps"]["observation"] for ep in episodes])
    np.testing.assert_allclose(data.x_train, obs[:5])
    np.testing.assert_allclose(data.x_test, obs[10:14])


# ---------------------------------------------------------------- Minari

def test_minari_layout(tmp_path):
    episodes = fx.write_minari(tmp_path, "mujoco/hopper/expert-v0", [5, 7, 4, 6, 8])
    data = load_dataset(config("minari", tmp_path, dataset_id="mujoco/hopper/expert-v0", train_size=8, test_size=3))
    obs = np.concatenate([ep["observations"][:-1] for ep in episodes])
    act = np.concatenate([ep["actions"] for ep in episodes])
    np.testing.assert_allclose(data.x_train, obs[:8], rtol=1e-6)
    np.testing.assert_array_equal(data.y_train, act[:8])
    np.testing.assert_allclose(data.x_test, obs[12:15], rtol=1e-6)
    assert data.info["dataset_id"] == "mujoco/hopper/expert-v0" and data.info["total_steps"] == 30


@pytest.mark.parametrize("bad", ["no_metadata", "no_id", "obs_count", "dict_obs", "no_episodes"])
def test_minari_bad_input(tmp_path, bad):
    fx.write_minari(tmp_path, "toy-v0", [4, 4])
    data_dir = tmp_path / "toy-v0" / "data"
    with h5py.File(data_dir / "main_data.hdf5", "a") as f:
        if bad == "obs_count":
            obs = f["episode_1/observations"][:-1]
            del f["episode_1/observations"]
            f["episode_1/observations"] = obs
        elif bad == "dict_obs":
            del f["episode_0/observations"]
            f.create_group("episode_0/observations").create_dataset("pos", data=np.ones((5, 2)))
        elif bad == "no_episodes":
            for key in list(f):
                del f[key]
    if bad == "no_metadata":
        os.remove(data_dir / "metadata.json")
    expected = {"no_metadata": "metadata.json", "no_id": "data.dataset_id is empty", "obs_count": "T\\+1 observations",
                "dict_obs": "dict space", "no_episodes": "no episode_<i> groups"}[bad]
    with pytest.raises(DataError, match=expected) as e:
        load_dataset(config("minari", tmp_path, dataset_id="" if bad == "no_id" else "toy-v0"))
    assert "'minari'" in str(e.value)


# ---------------------------------------------------------------- CARLA

def read_carla(paths):
    rgb, targets = [], []
    for p in paths:
        with h5py.File(p, "r") as f:
            rgb.append(f["rgb"][:])
            targets.append(f["targets"][:])
    return np.concatenate(rgb), np.concatenate(targets)


def test_carla_h5_folder_split_by_files_and_targets(tmp_path):
    paths = fx.write_carla_h5(tmp_path, num_files=4, frames_per_file=6)
    rgb, raw = read_carla(paths)
    data = load_dataset(config("carla", tmp_path, image_size=16, train_size=8, test_size=5))
    assert data.x_train.shape == (8, 16, 16, 3) and data.x_train.dtype == np.float32
    np.testing.assert_array_equal(data.y_train, raw[:8][:, [10, 0]])  # [speed, steer]
    np.testing.assert_array_equal(data.y_test, raw[12:17][:, [10, 0]])  # the file after the cut one
    # Resized, ImageNet-normalized frames: undoing the normalization gives the resized uint8 / 255.
    from PIL import Image
    expected = np.asarray(Image.fromarray(rgb[12]).resize((16, 16), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(unit_image(data.x_test[0]), expected, atol=1e-5)
    steer = load_dataset(config("carla", tmp_path, image_size=16, targets="steer", train_size=8, test_size=5))
    np.testing.assert_array_equal(steer.y_train, raw[:8][:, [0]])
    assert load_dataset(config("carla", tmp_path, image_size=16, targets="speed")).target_dim == 1


def test_carla_large_splits_stream(tmp_path):
    fx.write_carla_h5(tmp_path, num_files=3, frames_per_file=6)
    small = load_dataset(config("carla", tmp_path, image_size=12, train_size=10, test_size=4))
    lazy = load_dataset(config("carla", tmp_path, image_size=12, train_size=10, test_size=4, max_in_memory_mb=0.001))
    assert lazy.streamed and not small.streamed and lazy.input_shape == (12, 12, 3)
    assert isinstance(lazy.x_train, ImageSource) and len(lazy.x_train) == 10
    idx = np.array([7, 0, 3, 7])
    np.testing.assert_allclose(lazy.x_train[idx], small.x_train[idx], atol=1e-6)
    seen = []
    for xb, yb in batches.iterate_batches(lazy.x_train, lazy.y_train, 4, seed=3, drop_remainder=False):
        seen.append(yb)
        assert xb.shape[1:] == (12, 12, 3)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen), axis=0), np.sort(small.y_train, axis=0))


def test_carla_seqtrain_seqval_and_npy(tmp_path):
    train_paths = fx.write_carla_h5(tmp_path / "h5" / "SeqTrain", 2, 5, seed=1)
    val_paths = fx.write_carla_h5(tmp_path / "h5" / "SeqVal", 1, 4, seed=2)
    data = load_dataset(config("carla", tmp_path / "h5", image_size=8))
    assert (data.train_size, data.test_size) == (10, 4)
    np.testing.assert_array_equal(data.y_test, read_carla(val_paths)[1][:, [10, 0]])
    np.testing.assert_array_equal(data.y_train, read_carla(train_paths)[1][:, [10, 0]])
    images, targets = fx.write_carla_npy(tmp_path / "npy", 12)
    data = load_dataset(config("carla", tmp_path / "npy", image_size=8, image_normalization="unit"))
    assert (data.train_size, data.test_size) == (10, 2) and 0 <= data.x_train.min() and data.x_train.max() <= 1
    np.testing.assert_array_equal(data.y_test, targets[10:][:, [10, 0]])
    from PIL import Image
    lazy = load_dataset(config("carla", tmp_path / "npy", image_size=8, image_normalization="unit", max_in_memory_mb=0.0))
    for i in (9, 0, 4):
        expected = np.asarray(Image.fromarray(images[i]).resize((8, 8), Image.BILINEAR)) / 255.0
        np.testing.assert_allclose(data.x_train[i], expected, atol=1e-6)
    np.testing.assert_allclose(lazy.x_train[np.array([9, 0, 4])], data.x_train[[9, 0, 4]])


@pytest.mark.parametrize("bad", ["no_folder", "empty_folder", "no_rgb", "rows", "targets_choice", "npy_rows", "bad_norm"])
def test_carla_bad_input(tmp_path, bad):
    folder = tmp_path / "carla"
    fields = {"image_size": 8}
    if bad not in ("no_folder", "empty_folder", "npy_rows"):
        paths = fx.write_carla_h5(folder, 2, 4)
        if bad in ("no_rgb", "rows"):
            with h5py.File(paths[1], "a") as f:
                if bad == "no_rgb":
                    del f["rgb"]
                else:
                    targets = f["targets"][:-1]
                    del f["targets"]
                    f["targets"] = targets
    if bad == "empty_folder":
        folder.mkdir()
    elif bad == "npy_rows":
        fx.write_carla_npy(folder, 5)
        np.save(folder / "targets.npy", np.ones((4, 28)))
    elif bad == "targets_choice":
        fields["targets"] = "throttle"
    elif bad == "bad_norm":
        fields["image_normalization"] = "zscore"
    expected = {"no_folder": "does not exist", "empty_folder": "holds no .h5 files", "no_rgb": r"lacks \['rgb'\]",
                "rows": "4 rows but targets has 3 rows", "targets_choice": "speed_steer", "npy_rows": "5 rows but",
                "bad_norm": "imagenet"}[bad]
    with pytest.raises(DataError, match=expected) as e:
        load_dataset(config("carla", folder, **fields))
    assert "'carla'" in str(e.value)


# ---------------------------------------------------------------- UTKFace

def test_utkface_ages_and_malformed_names(tmp_path):
    ages = [1, 25, 33, 40, 58, 7, 90, 116, 12, 45, 30, 21]
    names = fx.write_utkface(tmp_path, ages, side=20)
    data = load_dataset(config("utkface", tmp_path, image_size=10, train_size=9, test_size=3, image_normalization="unit"))
    assert data.info["skipped_malformed"] == len(fx.UTKFACE_MALFORMED) and data.info["images_found"] == 12
    assert sorted(np.concatenate([data.y_train, data.y_test])[:, 0].tolist()) == sorted(ages)
    assert data.x_train.shape == (9, 10, 10, 3) and 0 <= data.x_train.min() and data.x_train.max() <= 1
    # The image of each sample is the file named with its age.
    by_age = {age: name for age, name in zip(ages, names)}
    from PIL import Image
    first = np.asarray(Image.open(tmp_path / by_age[int(data.y_train[0, 0])]).convert("RGB").resize((10, 10), Image.BILINEAR))
    np.testing.assert_allclose(data.x_train[0], first / 255.0, atol=1e-6)
    again = load_dataset(config("utkface", tmp_path, image_size=10, train_size=9, test_size=3, image_normalization="unit"))
    np.testing.assert_array_equal(again.y_train, data.y_train)
    other = load_dataset(config("utkface", tmp_path, image_size=10, train_size=9, test_size=3, seed=1))
    assert not np.array_equal(other.y_train, data.y_train)
    plain = fx.write_utkface(tmp_path / "plain", [20, 30, 40, 50, 60, 70], chip=False)
    assert load_dataset(config("utkface", tmp_path / "plain", image_size=8)).info["images_found"] == len(plain)


def test_utkface_bad_input(tmp_path):
    with pytest.raises(DataError, match="missing \\(data.path\\) does not exist"):
        load_dataset(config("utkface", tmp_path / "missing"))
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset(config("utkface", tmp_path / "file.jpg"))
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "face.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="no well-named .jpg files \\(1 malformed"):
        load_dataset(config("utkface", tmp_path / "only_bad"))
    fx.write_utkface(tmp_path / "broken", [20, 30, 40, 50, 60, 70])
    (tmp_path / "broken" / "20_0_0_20170116174525125.jpg.chip.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot decode .*20_0_0_2017"):
        load_dataset(config("utkface", tmp_path / "broken", image_size=8))


# ---------------------------------------------------------------- SGEMM

def test_sgemm_csv(tmp_path):
    table = fx.write_sgemm_csv(tmp_path / "sgemm_product.csv", 60)
    data = load_dataset(config("sgemm", tmp_path, train_size=40, test_size=10))
    assert data.input_shape == (14,) and data.target_dim == 4 and (data.train_size, data.test_size) == (40, 10)
    rows = {tuple(r[:14]): r[14:] for r in table}
    for x, y in zip(data.x_train, data.y_train):
        np.testing.assert_allclose(y, rows[tuple(x)], rtol=1e-6)
    again = load_dataset(config("sgemm", tmp_path / "sgemm_product.csv", train_size=40, test_size=10))
    np.testing.assert_array_equal(again.x_test, data.x_test)
    assert not np.array_equal(load_dataset(config("sgemm", tmp_path, train_size=40, seed=1)).y_train, data.y_train)
    logs = load_dataset(config("sgemm", tmp_path, train_size=40, test_size=10, targets="log_runs"))
    np.testing.assert_allclose(np.exp(logs.y_train), data.y_train, rtol=1e-5)
    defaults = load_dataset(config("sgemm", tmp_path))
    assert (defaults.train_size, defaults.test_size) == (50, 10)


@pytest.mark.parametrize("bad", ["header", "cell", "missing", "nan"])
def test_sgemm_bad_input(tmp_path, bad):
    path = tmp_path / "sgemm_product.csv"
    fx.write_sgemm_csv(path, 10)
    lines = path.read_text().splitlines()
    if bad == "header":
        lines[0] = lines[0].replace("Run4 (ms)", "Run5 (ms)")
    elif bad == "cell":
        lines[3] = lines[3].replace(",", ",x", 1)
    elif bad == "nan":
        lines[4] = lines[4].rsplit(",", 1)[0] + ",nan"
    path.write_text("\n".join(lines) + "\n")
    target = tmp_path / "other" if bad == "missing" else path
    expected = {"header": "expected 'MWG", "cell": "not all cells are numbers", "missing": "no such file",
                "nan": "non-finite"}[bad]
    with pytest.raises(DataError, match=expected) as e:
        load_dataset(config("sgemm", target))
    assert "'sgemm'" in str(e.value)


# ---------------------------------------------------------------- synthetic images

def test_synthetic_images_defaults_and_determinism():
    data = load_dataset(config("synthetic_images"))
    assert data.x_train.shape == (2000, 32, 32, 3) and data.x_test.shape == (400, 32, 32, 3)
    assert data.y_train.shape == (2000, 3) and np.isfinite(data.x_train).all()
    small = load_dataset(config("synthetic_images", train_size=50, test_size=20, seed=0))
    np.testing.assert_array_equal(small.x_train, data.x_train[:50])  # scene i does not depend on the size
    np.testing.assert_array_equal(small.y_test, data.y_test[:20])
    other = load_dataset(config("synthetic_images", train_size=50, test_size=20, seed=1))
    assert not np.array_equal(other.y_train, small.y_train)
    assert not np.array_equal(data.y_train[:400], data.y_test)  # train and test scenes differ
    corr = np.corrcoef(data.y_train, rowvar=False)
    assert corr[1, 2] > 0.3  # size grows with y
    assert load_dataset(config("synthetic_images", targets="x_y", train_size=10, test_size=5)).target_dim == 2


def test_synthetic_images_targets_locate_the_shape():
    data = load_dataset(config("synthetic_images", train_size=40, test_size=5, image_size=48, image_normalization="unit"))
    from nrc_jax.data import synthetic_images as si
    scenes = si.sample_scenes(0, "train", 40)
    for i in range(40):
        x, y, half = data.y_train[i]
        centre_pixel = data.x_train[i, int(y * 48), int(x * 48)] * 255
        far = data.x_train[i, 0, 0] * 255 if max(abs(x - 0.01), abs(y - 0.01)) > half + 0.05 else None
        np.testing.assert_allclose(centre_pixel, scenes["fg"][i], atol=4 * si.NOISE_STD)
        if far is not None and np.abs(scenes["fg"][i] - scenes["bg_a"][i]).max() > 100:
            assert np.abs(far - scenes["fg"][i]).max() > 4 * si.NOISE_STD


def test_synthetic_images_bad_config():
    with pytest.raises(DataError, match="x_y_size"):
        load_dataset(config("synthetic_images", targets="speed"))
    with pytest.raises(DataError, match="image_size=4"):
        load_dataset(config("synthetic_images", image_size=4))


# ---------------------------------------------------------------- batch streaming

def test_batches_cover_epoch_and_match_without_prefetch():
    x = np.arange(23, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    y = np.arange(23, dtype=np.float32)[:, None]
    with_thread = list(batches.iterate_batches(x, y, 5, seed=1, epoch=2, drop_remainder=False))
    inline = list(batches.iterate_batches(x, y, 5, seed=1, epoch=2, drop_remainder=False, prefetch=0))
    parallel = list(batches.iterate_batches(x, y, 5, seed=1, epoch=2, drop_remainder=False, num_workers=3))
    assert len(with_thread) == len(parallel) == batches.num_batches(23, 5, False) == 5
    for (xa, ya), (xb, yb), (xc, _) in zip(with_thread, inline, parallel):
        np.testing.assert_array_equal(xc, xb)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa[:, 0], ya[:, 0])
    assert sorted(np.concatenate([b[1] for b in with_thread])[:, 0].tolist()) == list(range(23))
    assert len(list(batches.iterate_batches(x, y, 5))) == 4
    other_epoch = list(batches.iterate_batches(x, y, 5, seed=1, epoch=3))
    assert not np.array_equal(other_epoch[0][1], with_thread[0][1])


def test_batches_split_across_processes():
    y = np.arange(16, dtype=np.float32)[:, None]
    parts = [list(batches.iterate_batches(y, y, 8, seed=0, process_index=p, process_count=2)) for p in range(2)]
    full = list(batches.iterate_batches(y, y, 8, seed=0))
    for b in range(2):
        np.testing.assert_array_equal(np.concatenate([parts[0][b][1], parts[1][b][1]]), full[b][1])
    with pytest.raises(ConfigError, match="divisible"):
        list(batches.iterate_batches(y, y, 7, process_count=2))


class FailingSource:
    """An ArraySource whose row `broken` raises and whose row `nan_row` holds a NaN."""
    shape, dtype = (10, 2), np.dtype(np.float32)

    def __init__(self, broken=None, nan_row=None):
        self.broken, self.nan_row = broken, nan_row

    def __len__(self):
        return 10

    def __getitem__(self, idx):
        if self.broken in idx:
            raise DataError(f"data set 'toy': broken row {self.broken}")
        out = np.ones((len(idx), 2), np.float32)
        out[idx == self.nan_row, 0] = np.nan
        return out


def test_batches_errors_reach_the_caller_and_threads_stop():
    y = np.zeros((10, 1), np.float32)
    with pytest.raises(DataError, match="broken row 9"):
        list(batches.iterate_batches(FailingSource(broken=9), y, 2, shuffle=False, name="toy"))
    with pytest.raises(DataError, match="'toy'.*nan/inf, first in batch row 1"):
        list(batches.iterate_batches(FailingSource(nan_row=6), y, 5, shuffle=False, name="toy"))
    before = threading.active_count()
    stream = batches.iterate_batches(np.zeros((100, 1)), np.zeros((100, 1)), 2, prefetch=1, num_workers=2)
    next(stream)
    stream.close()
    assert threading.active_count() == before
    placed = list(batches.iterate_batches(np.ones((4, 1)), np.ones((4, 1)), 2, to_device=lambda b: ("dev", b)))
    assert placed[0][0] == "dev"


def test_streamed_batches_land_sharded_on_devices():
    data = load_dataset(config("synthetic_images", train_size=32, test_size=8, image_size=8, max_in_memory_mb=0.0))
    assert data.streamed
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    stream = batches.iterate_batches(data.x_train, data.y_train, 16, seed=0,
                                     to_device=lambda batch: jax.device_put(batch, sharding))
    for x, y in stream:
        assert x.shape == (16, 8, 8, 3) and y.shape == (16, 3)
        assert x.sharding == sharding and len(x.addressable_shards) == len(jax.devices())


def test_info_is_json_serializable(tmp_path):
    import json
    fx.write_d4rl_hdf5(tmp_path / "d.hdf5", EPISODES)
    fx.write_minari(tmp_path / "minari", "toy-v0", [4, 4, 4])
    fx.write_carla_h5(tmp_path / "carla", 2, 3)
    fx.write_utkface(tmp_path / "utk", [10, 20, 30, 40, 50, 60])
    fx.write_sgemm_csv(tmp_path / "sgemm_product.csv", 12)
    configs = [config("d4rl", tmp_path / "d.hdf5"), config("minari", tmp_path / "minari", dataset_id="toy-v0"),
               config("carla", tmp_path / "carla", image_size=8), config("utkface", tmp_path / "utk", image_size=8),
               config("sgemm", tmp_path), config("synthetic_images", train_size=4, test_size=2)]
    for cfg in configs:
        data = load_dataset(cfg)
        json.dumps({"info": data.info, "transform": data.transform.to_dict()})
        assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.float32, cfg.name
