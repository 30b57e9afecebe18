"""TFDS builders for the expert imitation data: one `GeneratorBasedBuilder` per environment,
registered with TFDS by `import nrc_jax.data`.

Outside nrc_jax, each builder's default config gives one record per time step (`observation`
(obs_dim,), `action` (act_dim,), `reward`, `episode`, `step`) at the registry's default settings
(seed 0, the paper's sizes, action noise 0.1):

    import nrc_jax.data, tensorflow_datasets as tfds
    train = tfds.data_source("nrc_swimmer_expert", split="train")   # train[i]["observation"]: (8,)

nrc_jax's own loader asks for per-episode records (`records="episodes"`) under a config named by
its generation parameters. There each example is one episode (key = its index within the split): `observation` (T, obs_dim) float32
(the inputs x), `action` (T, act_dim) float32 (the targets y), `reward` (T,), `episode_return` (the
full episode's return, at float32 precision as tf.train.Example floats are 32-bit), `env_seed` (its
reset seed) and `truncated` (the split's last episode, cut to the requested size). One record per
episode rather than per step keeps decoding cheap: TFDS's pure-Python example parser costs about a
millisecond per record (6.7 s measured for Hopper's 10,000 training steps, one record each).
Files are array_record, read back with `tfds.data_source` (random access, no TensorFlow needed).
The generation parameters (seed, sizes, action noise, a digest of the expert file) form the
builder config, so each combination is cached once under `<data_dir>/<builder>/<config>/<version>`
and retraining an expert invalidates its cached data.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import inspect

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from nrc_jax.data.mujoco.envs import ENV_SPECS, EnvSpec
from nrc_jax.data.mujoco.generate import StepData, collect_steps
from nrc_jax.data.mujoco.policies import load_policy

VERSION = tfds.core.Version("1.0.0")
# builder name -> number of times the data were generated in this process (tests read it to check
# that a second load hits the cache).
GENERATION_CALLS: collections.Counter = collections.Counter()


@dataclasses.dataclass
class ExpertDataConfig(tfds.core.BuilderConfig):
    """Generation parameters; `name` encodes all of them (see `make_config`)."""

    seed: int = 0
    train_size: int = 0
    test_size: int = 0
    action_noise: float = 0.0
    expert_digest: str = ""
    records: str = "episodes"  # "episodes": one record per episode; "steps": one per time step


def expert_digest(spec: EnvSpec) -> str:
    """First 10 hex digits of the SHA-256 of the shipped expert file ("missing" without one: the
    builders' default configs are made at import, and loading then names the missing file)."""
    if not spec.expert_path.is_file():
        return "missing"
    return hashlib.sha256(spec.expert_path.read_bytes()).hexdigest()[:10]


def make_config(spec: EnvSpec, *, seed: int, train_size: int, test_size: int, action_noise: float,
                records: str = "episodes") -> ExpertDataConfig:
    """The builder config for one generation setting (sizes in steps) and record layout."""
    if records not in ("episodes", "steps"):
        raise ValueError(f"records={records!r}: allowed 'episodes', 'steps'")
    digest = expert_digest(spec)
    noise = f"{action_noise:g}".replace(".", "p").replace("-", "m")
    layout = "_steps" if records == "steps" else ""  # episode configs keep their original names (caches)
    return ExpertDataConfig(
        name=f"seed{seed}_train{train_size}_test{test_size}_noise{noise}_expert{digest}{layout}",
        version=VERSION,
        description=(f"{spec.gym_id} expert steps, seed {seed}, {train_size} train / {test_size} test steps, "
                     f"Gaussian action noise std {action_noise:g}, expert file sha256 {digest}..., one "
                     f"record per {'time step' if records == 'steps' else 'episode'}"),
        seed=seed, train_size=train_size, test_size=test_size, action_noise=action_noise, expert_digest=digest,
        records=records)


def default_config(spec: EnvSpec) -> ExpertDataConfig:
    """What `tfds.data_source("nrc_<name>_expert")` builds: the registry's default settings (seed 0,
    the paper's sizes, action noise 0.1, as `nrc_jax.data.default_data_config`), one record per step."""
    return make_config(spec, seed=0, train_size=spec.train_size, test_size=spec.test_size, action_noise=0.1,
                       records="steps")


class ExpertImitationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class: subclasses set `ENV` and get registered under their snake-case class name."""

    ENV: EnvSpec
    VERSION = VERSION
    RELEASE_NOTES = {"1.0.0": "First release: whole expert episodes, last one cut to the requested size."}

    def __init__(self, *, file_format: str | None = None, **kwargs):
        # array_record unless asked otherwise: random access (tfds.data_source) without TensorFlow,
        # which TFRecord, TFDS's default, needs to write. (tfds.load needs TFRecord and TensorFlow.)
        super().__init__(file_format=file_format or "array_record", **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's default evaluates `importlib_resources.abc.Traversable` for any builder that
        # lives in a package, but declares the `importlib_resources` backport only for Python < 3.9,
        # so it raises ModuleNotFoundError here. This is TFDS's own fallback branch (the source file).
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.ENV
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"Offline expert imitation data for Gymnasium {spec.gym_id}: x = observation ({spec.obs_dim}), "
                f"y = expert action ({spec.act_dim}). The expert ships with nrc_jax "
                f"(nrc_jax/data/mujoco/experts/{spec.name}.npz). Train and test come from different whole "
                "episodes (reset seeds from SeedSequence([seed, split])); the last episode of a split is cut "
                "so the split has exactly the requested number of steps. Each record is one time step "
                "(configs ending in _steps, the default) or one episode; metadata holds the expert's "
                "evaluation returns."),
            features=self._features(),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
            homepage="https://gymnasium.farama.org/environments/mujoco/",
        )

    def _features(self) -> tfds.features.FeaturesDict:
        spec = self.ENV
        if self.builder_config.records == "steps":
            return tfds.features.FeaturesDict({
                "observation": tfds.features.Tensor(shape=(spec.obs_dim,), dtype=np.float32),
                "action": tfds.features.Tensor(shape=(spec.act_dim,), dtype=np.float32),
                "reward": np.float32,
                "episode": np.int64,  # index of the episode within the split
                "step": np.int64,     # time step within the episode
            })
        return tfds.features.FeaturesDict({
            "observation": tfds.features.Tensor(shape=(None, spec.obs_dim), dtype=np.float32),
            "action": tfds.features.Tensor(shape=(None, spec.act_dim), dtype=np.float32),
            "reward": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "episode_return": np.float64,
            "env_seed": np.int64,
            "truncated": np.bool_,
        })

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is simulated locally
        GENERATION_CALLS[self.name] += 1
        config = self.builder_config
        policy, expert_meta = load_policy(self.ENV.expert_path)
        self.info.metadata["expert_eval_returns"] = [float(r) for r in expert_meta.get("eval_returns", [])]
        splits = {}
        for split, size in (("train", config.train_size), ("test", config.test_size)):
            data = collect_steps(self.ENV, policy, size, seed=config.seed, split=split,
                                 action_noise=config.action_noise)
            splits[split] = self._generate_examples(data)
        return splits

    def _generate_examples(self, data: StepData):
        """One record per step (key = row) or per episode (key = episode index); the split's last
        episode may be cut."""
        if self.builder_config.records == "steps":
            for i in range(len(data.actions)):
                yield i, {"observation": data.observations[i], "action": data.actions[i],
                          "reward": data.rewards[i], "episode": int(data.episode[i]), "step": int(data.step[i])}
            return
        for e, seed in enumerate(data.env_seeds):
            rows = data.episode == e
            yield e, {"observation": data.observations[rows], "action": data.actions[rows],
                      "reward": data.rewards[rows], "episode_return": data.episode_returns[e],
                      "env_seed": seed, "truncated": e == len(data.env_seeds) - 1 and data.cut_last}


class NrcSwimmerExpert(ExpertImitationBuilder):
    """Swimmer-v5 expert imitation data (ARS linear expert)."""

    ENV = ENV_SPECS["swimmer"]
    BUILDER_CONFIGS = [default_config(ENV)]


class NrcReacherExpert(ExpertImitationBuilder):
    """Reacher-v5 expert imitation data (scripted Jacobian-transpose PD expert)."""

    ENV = ENV_SPECS["reacher"]
    BUILDER_CONFIGS = [default_config(ENV)]


class NrcHopperExpert(ExpertImitationBuilder):
    """Hopper-v5 expert imitation data (ARS linear expert)."""

    ENV = ENV_SPECS["hopper"]
    BUILDER_CONFIGS = [default_config(ENV)]


BUILDERS: dict[str, type[ExpertImitationBuilder]] = {
    "swimmer": NrcSwimmerExpert, "reacher": NrcReacherExpert, "hopper": NrcHopperExpert}
