"""Expert imitation data (swimmer / reacher / hopper): sizes, determinism, noise, cache, TFDS round trip."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from nrc_jax.data import default_data_config, load_dataset
from nrc_jax.data.mujoco import ars, tfds_builders
from nrc_jax.data.mujoco.envs import ENV_SPECS
from nrc_jax.data.mujoco.generate import collect_steps, evaluate, run_episode
from nrc_jax.data.mujoco.envs import make_env
from nrc_jax.data.mujoco.policies import LinearPolicy, ReacherPDPolicy, load_policy
from nrc_jax.errors import ConfigError


def config(name: str, cache_dir: pathlib.Path, **overrides):
    cfg = default_data_config()
    cfg.name = name
    cfg.cache_dir = str(cache_dir)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.mark.parametrize("name", ["swimmer", "reacher", "hopper"])
def test_small_sizes_dims_and_finite(name, cache):
    spec = ENV_SPECS[name]
    data = load_dataset(config(name, cache, train_size=120, test_size=30))
    assert data.x_train.shape == (120, spec.obs_dim) and data.y_train.shape == (120, spec.act_dim)
    assert data.x_test.shape == (30, spec.obs_dim) and data.y_test.shape == (30, spec.act_dim)
    for arr in (data.x_train, data.y_train, data.x_test, data.y_test):
        assert arr.dtype == np.float32 and np.isfinite(arr).all()
    assert np.abs(data.y_train).max() <= 1.0
    info = data.info
    assert info["env"] == spec.gym_id and info["seed"] == 0 and info["action_noise"] == 0.1
    assert len(info["expert_eval_returns"]) == 10 and np.isfinite(info["expert_return"])
    assert sum(info["train_episode_lengths"]) == 120 and sum(info["test_episode_lengths"]) == 30


def test_full_size_swimmer_whole_episodes(cache):
    data = load_dataset(config("swimmer", cache))
    assert (data.x_train.shape, data.y_train.shape) == ((1000, 8), (1000, 2))
    assert (data.x_test.shape, data.y_test.shape) == ((200, 8), (200, 2))
    # One whole 1000-step episode for train, the first 200 steps of another for test.
    assert data.info["train_episode_lengths"] == [1000] and data.info["test_episode_lengths"] == [200]
    assert not np.allclose(data.x_train[:200], data.x_test)


def test_collect_steps_cuts_only_the_last_episode():
    spec = ENV_SPECS["reacher"]
    policy, _ = load_policy(spec.expert_path)
    data = collect_steps(spec, policy, 120, seed=3, split="train")
    assert data.observations.shape == (120, 10) and len(data.episode_returns) == 3 and data.cut_last
    assert np.bincount(data.episode).tolist() == [50, 50, 20]
    assert data.step[:50].tolist() == list(range(50)) and data.step[-1] == 19
    test = collect_steps(spec, policy, 100, seed=3, split="test")
    assert not test.cut_last and not set(test.env_seeds) & set(data.env_seeds)


def test_deterministic_for_a_seed(tmp_path):
    first = load_dataset(config("reacher", tmp_path / "a", train_size=100, test_size=50, seed=5))
    again = load_dataset(config("reacher", tmp_path / "b", train_size=100, test_size=50, seed=5))
    other = load_dataset(config("reacher", tmp_path / "a", train_size=100, test_size=50, seed=6))
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
        assert not np.allclose(getattr(first, field), getattr(other, field))


def test_action_noise_changes_actions(cache):
    clean = load_dataset(config("reacher", cache, train_size=100, test_size=50))
    noisy = load_dataset(config("reacher", cache, train_size=100, test_size=50, action_noise=0.2))
    assert noisy.info["action_noise"] == 0.2
    # Same reset seeds: the first observation matches, then the noisy actions move the arm elsewhere.
    np.testing.assert_array_equal(clean.x_train[0], noisy.x_train[0])
    assert not np.allclose(clean.y_train[0], noisy.y_train[0])
    assert np.abs(noisy.y_train - clean.y_train).mean() > 0.05
    assert np.abs(noisy.y_train).max() <= 1.0


def test_second_load_hits_the_cache(tmp_path):
    cfg = config("swimmer", tmp_path, train_size=50, test_size=20, seed=9)
    calls = tfds_builders.GENERATION_CALLS["nrc_swimmer_expert"]
    first = load_dataset(cfg)
    assert tfds_builders.GENERATION_CALLS["nrc_swimmer_expert"] == calls + 1
    files = sorted(tmp_path.rglob("*.array_record*"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    second = load_dataset(cfg)
    assert tfds_builders.GENERATION_CALLS["nrc_swimmer_expert"] == calls + 1
    assert [f.stat().st_mtime_ns for f in files] == mtimes and len(files) == 2
    np.testing.assert_array_equal(first.x_train, second.x_train)


def test_env_var_sets_the_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NRC_JAX_DATA_DIR", str(tmp_path))
    data = load_dataset(config("reacher", "", train_size=50, test_size=50))
    assert data.info["data_dir"] == str(tmp_path)
    assert list(tmp_path.glob("nrc_reacher_expert/*/1.0.0/dataset_info.json"))


def test_tfds_builder_round_trip(cache):
    spec = ENV_SPECS["hopper"]
    builder_config = tfds_builders.make_config(spec, seed=2, train_size=300, test_size=100, action_noise=0.0)
    sources = tfds.data_source("nrc_hopper_expert", data_dir=str(cache),
                               builder_kwargs={"config": builder_config, "file_format": "array_record"})
    train = sources["train"]
    episodes = [train[i] for i in range(len(train))]
    assert sum(len(e["action"]) for e in episodes) == 300
    assert all(e["observation"].shape == (len(e["action"]), 11) and e["action"].shape[1] == 3 for e in episodes)
    assert episodes[-1]["truncated"] and not any(e["truncated"] for e in episodes[:-1])
    builder = tfds.builder("nrc_hopper_expert", data_dir=str(cache), config=builder_config, file_format="array_record")
    assert str(builder.info.version) == "1.0.0" and "Hopper-v5" in builder.info.description
    assert builder.info.splits["test"].num_examples == len(sources["test"])
    assert len(builder.info.metadata["expert_eval_returns"]) == 10
    # The loader returns exactly these records, concatenated.
    data = load_dataset(config("hopper", cache, train_size=300, test_size=100, seed=2, action_noise=0.0))
    np.testing.assert_array_equal(data.x_train, np.concatenate([e["observation"] for e in episodes]))


@pytest.mark.parametrize("field,value", [("train_size", -5), ("test_size", -3), ("action_noise", -0.1), ("seed", -1)])
def test_bad_generation_fields_name_the_field(cache, field, value):
    with pytest.raises(ConfigError, match=f"data.{field}"):
        load_dataset(config("swimmer", cache, **{field: value}))


def test_expert_files_load_and_match_their_recorded_returns():
    kinds = {"swimmer": LinearPolicy, "reacher": ReacherPDPolicy, "hopper": LinearPolicy}
    for name, spec in ENV_SPECS.items():
        policy, meta = load_policy(spec.expert_path)
        assert isinstance(policy, kinds[name]) and meta["eval_returns"].shape == (10,)
        action = policy(np.zeros(spec.obs_dim))
        assert action.shape == (spec.act_dim,)
        if isinstance(policy, LinearPolicy):
            assert policy.weights.shape == (spec.act_dim, spec.obs_dim) and (policy.obs_std > 0).all()
    # Evaluation is deterministic: re-running reproduces the stored numbers.
    reacher_policy, reacher_meta = load_policy(ENV_SPECS["reacher"].expert_path)
    np.testing.assert_allclose(evaluate(ENV_SPECS["reacher"], reacher_policy, 10), reacher_meta["eval_returns"])
    assert load_policy(ENV_SPECS["swimmer"].expert_path)[1]["eval_returns"].mean() > 325


def test_ars_iteration_updates_and_resumes(tmp_path):
    spec = ENV_SPECS["swimmer"]
    config = dataclasses.replace(ars.ARS_CONFIGS["swimmer"], normalize=True)
    state = ars.ARSState.initial(spec)
    env = make_env(spec)
    ars.ars_iteration(state, spec, config, env, seed=0)
    assert state.iteration == 1 and state.episodes == 2 and state.env_steps == 2000 and state.obs_count == 2000
    assert np.abs(state.weights).sum() > 0
    state.save(str(tmp_path / "s.npz"))
    restored = ars.ARSState.load(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(restored.weights, state.weights)
    assert (restored.iteration, restored.episodes, restored.obs_count) == (1, 2, 2000.0)
    mean, std = restored.normalizer(True)
    assert mean.shape == (8,) and (std > 0).all()
    episode = run_episode(env, restored.policy(True), env_seed=1, horizon=5)
    assert episode.observations.shape == (5, 8)


def test_building_keeps_stdout_clean(tmp_path, capsys):
    # `python -m nrc_jax.data describe NAME --json` prints JSON on stdout; TFDS's banner must not mix in.
    load_dataset(config("reacher", tmp_path, train_size=50, test_size=50, seed=4))
    assert capsys.readouterr().out == ""
