"""`load_expert_data`: the swimmer / reacher / hopper registry entries.

Reads (and on first use builds) the TFDS expert data set through `tfds.data_source` and returns a
`RegressionData` with x = observations, y = expert actions (float32).

Data config fields used: `seed`, `train_size` / `test_size` (steps; 0 or -1 = the paper's size,
test 0 or -1 = 20% of train), `action_noise` (Gaussian std added to the expert's actions; the
registry default is 0.1, like data recorded from a stochastic agent; 0 = the expert's own actions), `cache_dir` (TFDS data_dir; empty = $NRC_JAX_DATA_DIR or
~/.cache/nrc_jax/tfds).
"""
from __future__ import annotations

import contextlib
import io
import math
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging
from tensorflow_datasets.core.utils import tqdm_utils as tfds_tqdm

from nrc_jax.data.base import RegressionData, check_arrays
from nrc_jax.data.mujoco.envs import ENV_SPECS, EnvSpec
from nrc_jax.data.mujoco.tfds_builders import BUILDERS, ExpertDataConfig, make_config
from nrc_jax.errors import ConfigError, DataError

DEFAULT_SIZE = (0, -1)  # either value selects the paper's size


def resolve_cache_dir(cache_dir: str) -> str:
    """The TFDS data_dir: `cache_dir`, else $NRC_JAX_DATA_DIR, else ~/.cache/nrc_jax/tfds."""
    chosen = cache_dir or os.environ.get("NRC_JAX_DATA_DIR", "") or "~/.cache/nrc_jax/tfds"
    return os.path.abspath(os.path.expanduser(chosen))


def resolve_sizes(spec: EnvSpec, train_size: int, test_size: int) -> tuple[int, int]:
    """(train, test) step counts; defaults are the paper's train size and 20% of train for test."""
    for field, value in (("data.train_size", train_size), ("data.test_size", test_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or (value < 0 and value not in DEFAULT_SIZE):
            raise ConfigError(f"{field}={value!r} for data set {spec.name!r}: expected a positive step count, "
                              "or 0 / -1 for the paper's size")
    train = spec.train_size if train_size in DEFAULT_SIZE else int(train_size)
    test = max(1, math.ceil(0.2 * train)) if test_size in DEFAULT_SIZE else int(test_size)
    return train, test


def builder_config(name: str, data_config: ml_collections.ConfigDict) -> ExpertDataConfig:
    """Validates the generation fields of `data_config` and returns the TFDS builder config."""
    spec = ENV_SPECS[name]
    train, test = resolve_sizes(spec, data_config.get("train_size", 0), data_config.get("test_size", 0))
    seed = data_config.get("seed", 0)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"data.seed={seed!r} for data set {name!r}: expected an integer >= 0")
    noise = data_config.get("action_noise", 0.0)
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not math.isfinite(noise) or noise < 0:
        raise ConfigError(f"data.action_noise={noise!r} for data set {name!r}: expected a finite std >= 0")
    if not spec.expert_path.is_file():
        raise DataError(f"data set {name!r}: expert parameter file missing: {spec.expert_path}")
    return make_config(spec, seed=int(seed), train_size=train, test_size=test, action_noise=float(noise))


def read_split(source) -> dict[str, np.ndarray]:
    """Concatenates the episode records of an array_record data source (in generation order).

    Returns observation (N, obs_dim), action (N, act_dim), episode_return (E,), episode_length (E,).
    """
    episodes = source.__getitems__(list(range(len(source))))
    return {
        "observation": np.concatenate([e["observation"] for e in episodes]),
        "action": np.concatenate([e["action"] for e in episodes]),
        "episode_return": np.array([e["episode_return"] for e in episodes]),
        "episode_length": np.array([len(e["action"]) for e in episodes]),
    }


@contextlib.contextmanager
def quiet_tfds():
    """Silences TFDS around nrc_jax's own calls: its "Using custom data configuration" warnings (460
    characters each, nrc_jax names every generation setting), progress bars, and the "Downloading
    and preparing" banner it prints to stdout although nothing is downloaded (stdout stays the
    CLIs' output). Errors still propagate."""
    verbosity = absl_logging.get_verbosity()
    progress = tfds_tqdm._active  # noqa: SLF001 - TFDS keeps the switch of display_progress_bar here
    absl_logging.set_verbosity(absl_logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(progress)
        absl_logging.set_verbosity(verbosity)


def load_expert_data(name: str, data_config: ml_collections.ConfigDict) -> RegressionData:
    """Loads the `name` expert set ('swimmer', 'reacher' or 'hopper'), generating it on first use."""
    config = builder_config(name, data_config)
    data_dir = resolve_cache_dir(data_config.get("cache_dir", ""))
    builder_cls = BUILDERS[name]
    builder_kwargs = {"config": config, "file_format": "array_record"}
    try:
        with quiet_tfds():
            prepared = tfds.builder(builder_cls.name, data_dir=data_dir, **builder_kwargs).is_prepared()
        if not prepared:
            absl_logging.info("generating the %s expert data (first use; cached in %s)", name, data_dir)
        with quiet_tfds():
            sources = tfds.data_source(builder_cls.name, data_dir=data_dir, builder_kwargs=builder_kwargs)
    except OSError as e:
        raise DataError(f"data set {name!r}: cannot build or read the TFDS cache under {data_dir}: {e}") from e
    splits = {split: read_split(sources[split]) for split in ("train", "test")}
    source = f"tfds {builder_cls.name}/{config.name}:{config.version} in {data_dir}"
    x_train, y_train = check_arrays(name, source, splits["train"]["observation"], splits["train"]["action"], "train")
    x_test, y_test = check_arrays(name, source, splits["test"]["observation"], splits["test"]["action"], "test")
    with quiet_tfds():
        metadata = tfds.builder(builder_cls.name, data_dir=data_dir, **builder_kwargs).info.metadata
    return RegressionData(name, x_train, y_train, x_test, y_test, info=expert_info(name, config, data_dir, metadata, splits))


def expert_info(name: str, config: ExpertDataConfig, data_dir: str, metadata: dict, splits: dict) -> dict:
    """Provenance: environment, generation parameters, expert and data returns, episode counts."""
    spec = ENV_SPECS[name]
    eval_returns = list(metadata.get("expert_eval_returns", []))
    info = {
        "source": f"tfds:{BUILDERS[name].name}/{config.name}:{config.version}",
        "data_dir": data_dir,
        "env": spec.gym_id,
        "seed": config.seed,
        "action_noise": config.action_noise,
        "expert_file": str(spec.expert_path),
        "expert_digest": config.expert_digest,
        "expert_eval_returns": eval_returns,
        "expert_return": float(np.mean(eval_returns)) if eval_returns else float("nan"),
        "reference_return": spec.reference_return,
    }
    for split, arrays in splits.items():
        info[f"{split}_episodes"] = len(arrays["episode_return"])
        info[f"{split}_episode_lengths"] = [int(n) for n in arrays["episode_length"]]
        info[f"{split}_episode_returns"] = [float(r) for r in arrays["episode_return"]]
        info[f"{split}_data_return"] = float(np.mean(arrays["episode_return"]))
    return info
