"""Config and data checks that run before any compilation: bad input is refused with one message.

`validate_config(config, num_devices=...)` checks every field the training engine reads (its type
and range) and the relations between fields, and raises one `ConfigError` that lists each problem
as `field=value: allowed ...`. `validate_data(config, data)` checks the loaded data against the
config (target dim n <= feature width d, image inputs for CNNs, a full batch when dropping the last
partial one). Both are cheap: no JAX computation, no file access.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import numbers
import os
import re
import urllib.parse
from typing import Any, Callable

import ml_collections

from nrc_jax.data import known_datasets
from nrc_jax.data.transforms import TRANSFORMS
from nrc_jax.engine import models, optim, sweeps
from nrc_jax.errors import ConfigError

MAX_SEED = 2**31 - 1  # seeds become int32 PRNG keys
SWEEP_MODES = ("product", "zip")
IMAGE_NORMALIZATIONS = ("imagenet", "unit")
NORMS = ("batch", "group", "none")
STEMS = ("imagenet", "cifar")
CNN_ARCHS = ("resnet18", "resnet34", "small_cnn")


@dataclasses.dataclass(frozen=True)
class Rule:
    """`accepts(value)` is True for allowed values; `allowed` says which in words."""

    accepts: Callable[[Any], bool]
    allowed: str
    item: "Rule | None" = None  # tuple fields: the rule of each entry


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int | None = None, high: int | None = None) -> Rule:
    bounds = (f" >= {low}" if low is not None else "") + (f" and <= {high}" if high is not None else "")
    return Rule(lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high),
                f"an integer{bounds}")


def positive() -> Rule:
    return Rule(lambda v: _is_real(v) and v > 0, "a finite number > 0")


def non_negative() -> Rule:
    return Rule(lambda v: _is_real(v) and v >= 0, "a finite number >= 0")


def fraction() -> Rule:
    """[0, 1): momentum and Adam's decay rates."""
    return Rule(lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)")


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "True or False")


def text() -> Rule:
    return Rule(lambda v: isinstance(v, str), "a string")


def choice(options: tuple[str, ...] | Callable[[], tuple[str, ...]]) -> Rule:
    names = options() if callable(options) else options
    return Rule(lambda v: isinstance(v, str) and v in names, f"one of {', '.join(map(repr, names))}")


def sequence_of(item: Rule, *, nonempty: bool = False) -> Rule:
    def accepts(v: Any) -> bool:
        return isinstance(v, (tuple, list)) and (len(v) > 0 or not nonempty) and all(item.accepts(x) for x in v)
    return Rule(accepts, f"a {'non-empty ' if nonempty else ''}tuple, each entry {item.allowed}", item)


def field_rules() -> dict[str, Rule]:
    """Every config field the training engine reads -> what it accepts."""
    return {
        "seed": integer(0, MAX_SEED),
        # data (the loaders check the fields' meaning against the files)
        "data.name": choice(known_datasets),
        "data.path": text(),
        "data.seed": integer(0, MAX_SEED),
        "data.target_transform": choice(TRANSFORMS),
        "data.train_size": integer(0),
        "data.test_size": integer(0),
        "data.action_noise": non_negative(),
        "data.cache_dir": text(),
        # model
        "model.arch": choice(models.ARCHS),
        "model.widths": sequence_of(integer(1), nonempty=True),
        "model.activation": choice(tuple(sorted(models.ACTIVATIONS))),
        "model.feature_activation": boolean(),
        "model.head_bias": boolean(),
        "model.init": choice(models.INITS),
        "model.width": integer(1),
        "model.feature_dim": integer(0),
        "model.norm": choice(NORMS),
        "model.stem": choice(STEMS),
        "model.channels": sequence_of(integer(1), nonempty=True),
        # optimizer and loss
        "optim.name": choice(optim.OPTIMIZERS),
        "optim.lr": positive(),
        "optim.momentum": fraction(),
        "optim.nesterov": boolean(),
        "optim.b1": fraction(),
        "optim.b2": fraction(),
        "optim.eps": positive(),
        "optim.regularizer": choice(optim.REGULARIZERS),
        "optim.weight_decay": non_negative(),
        "optim.decay_mode": choice(optim.DECAY_MODES),
        "optim.mse_reduction": choice(optim.MSE_REDUCTIONS),
        "optim.lambda_h": non_negative(),
        "optim.lambda_w": non_negative(),
        "optim.schedule": choice(optim.SCHEDULES),
        "optim.milestones": sequence_of(Rule(lambda v: _is_real(v) and 0 < v <= 1, "a number in (0, 1]")),
        "optim.decay_factor": positive(),
        # training loop
        "train.epochs": integer(1),
        "train.batch_size": integer(1),
        "train.eval_every": integer(1),
        "train.eval_log_points": integer(0),
        "train.checkpoint_every": integer(1),
        "train.max_to_keep": integer(1),
        "train.drop_last": boolean(),
        "train.eval_chunk": integer(1),
        "train.progress_bar": boolean(),
        # metrics
        "metrics.evr_k": integer(1),
        "metrics.per_layer": boolean(),
        "metrics.pca_iters": integer(0),
        # sweep: each entry of each tuple is checked like the field it overrides
        "sweep.mode": choice(SWEEP_MODES),
        "sweep.seed": sequence_of(integer(0, MAX_SEED)),
        "sweep.lr": sequence_of(positive()),
        "sweep.weight_decay": sequence_of(non_negative()),
        "sweep.lambda_h": sequence_of(non_negative()),
        "sweep.lambda_w": sequence_of(non_negative()),
        # devices
        "mesh.num_devices": Rule(lambda v: _is_int(v) and (v == -1 or v >= 1), "-1 (every device) or an integer >= 1"),
        "mesh.member_devices": integer(1),
    }


_MISSING = object()


def _lookup(config: ml_collections.ConfigDict, path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not hasattr(node, "keys") or part not in node:
            return _MISSING
        node = node[part]
    return node


def _describe(path: str, value: Any, rule: Rule) -> str:
    """`path=value: allowed ...`, naming the first bad entry of a tuple field."""
    if rule.item is not None and isinstance(value, (tuple, list)):
        for i, x in enumerate(value):
            if not rule.item.accepts(x):
                return f"{path}[{i}]={x!r} (in {path}={value!r}): allowed {rule.item.allowed}"
    return f"{path}={value!r}: allowed {rule.allowed}"


def field_problems(config: ml_collections.ConfigDict) -> list[str]:
    """One line per field that is missing or has a value its rule does not accept."""
    problems = []
    for path, rule in field_rules().items():
        value = _lookup(config, path)
        if value is _MISSING:
            problems.append(f"{path} is missing from the config: expected {rule.allowed}")
        elif not rule.accepts(value):
            problems.append(_describe(path, value, rule))
    return problems


def relation_problems(config: ml_collections.ConfigDict, num_devices: int | None) -> list[str]:
    """Problems between fields (only called once every field is individually valid)."""
    c, problems = config, []
    t = c.train
    if t.eval_every > t.epochs:
        problems.append(f"train.eval_every={t.eval_every}: allowed 1 <= train.eval_every <= train.epochs={t.epochs}")
    if t.checkpoint_every % t.eval_every:
        problems.append(f"train.checkpoint_every={t.checkpoint_every}: allowed a multiple of "
                        f"train.eval_every={t.eval_every} (checkpoints are written at evaluations)")
    milestones = list(c.optim.milestones)
    if c.optim.schedule == "step" and milestones != sorted(milestones):
        problems.append(f"optim.milestones={tuple(milestones)}: allowed increasing fractions of train.epochs")
    if c.sweep.mode == "zip":
        lengths = {f: len(c.sweep[f]) for f in ("seed", "lr", "weight_decay", "lambda_h", "lambda_w") if len(c.sweep[f])}
        if len(set(lengths.values())) > 1:
            problems.append(f"sweep.mode='zip' with sweep tuples of lengths {lengths}: allowed tuples of one length")
    try:
        optim.check_optim_config(c.optim)
    except ConfigError as e:
        problems.append(str(e))
    if num_devices is not None:
        problems += mesh_problems(c, num_devices)
    return problems


def mesh_problems(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
    """The mesh (members x data devices) against the devices present, the batch and the sweep."""
    c, problems = config, []
    wanted, per_member = c.mesh.num_devices, c.mesh.member_devices
    if wanted > num_devices:
        return [f"mesh.num_devices={wanted}: allowed -1 (all) or 1..{num_devices} (the devices present)"]
    devices = num_devices if wanted == -1 else wanted
    if devices % per_member:
        return [f"mesh.member_devices={per_member}: allowed a divisor of the mesh's {devices} devices "
                f"(mesh.num_devices={wanted})"]
    data_devices = devices // per_member
    if c.train.batch_size % data_devices:
        where = f"the {data_devices} devices of the mesh's data axis" if per_member > 1 else f"the {devices} devices of the mesh"
        problems.append(f"train.batch_size={c.train.batch_size}: allowed a multiple of {where} "
                        f"(mesh.num_devices={wanted}), e.g. {_round_up(c.train.batch_size, data_devices)}")
    num_members = len(sweeps.sweep_members(c))
    if num_members % per_member:
        problems.append(f"mesh.member_devices={per_member}: allowed a divisor of the sweep's {num_members} "
                        "members (each device group trains the same number)")
    return problems


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Raises ConfigError listing every bad field (name, value, what is allowed).

    Args:
      config: a full run config (configs/mlp.py layout).
      num_devices: the devices a run can use (`jax.device_count()`); None skips the device checks.
    """
    problems = field_problems(config)
    if not problems:  # relations assume well-typed fields
        problems = relation_problems(config, num_devices)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems) if len(problems) > 1 else problems[0])


# Object stores a workdir may be on: etils.epath writes its files through fsspec (with the client
# library named) and Orbax's tensorstore writes the checkpoints natively.
REMOTE_SCHEMES = {"gs": "gcsfs", "s3": "s3fs"}
# Schemes etils.epath reads but tensorstore cannot hold Orbax checkpoints on.
NO_CHECKPOINT_SCHEMES = ("az", "hf")


def _epath_can_open(scheme: str) -> bool:
    """etils.epath's rule: gs:// through TensorFlow when it is installed (unless EPATH_USE_TF is
    off), otherwise through fsspec and the scheme's client library."""
    if scheme == "gs" and importlib.util.find_spec("tensorflow") is not None and os.environ.get(
            "EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0"):
        return True
    return all(importlib.util.find_spec(m) is not None for m in ("fsspec", REMOTE_SCHEMES[scheme]))


def workdir_location(workdir: str) -> str:
    """`workdir` as a local path (a `file://` URL becomes its path) or an object-store URL that
    etils.epath can open (gs://, s3:// with their client library installed); any other URL raises
    ConfigError before anything is created, locally or remotely."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", workdir)
    if not match:
        return workdir
    scheme = match.group(1).lower()
    if scheme == "file":
        return urllib.parse.unquote(urllib.parse.urlparse(workdir).path) or "/"
    if scheme in REMOTE_SCHEMES:
        if _epath_can_open(scheme):
            return workdir
        client = REMOTE_SCHEMES[scheme]
        raise ConfigError(f"--workdir={workdir}: {scheme}:// workdirs need {client}, which is not installed (pip "
                          f"install {client}); or use a local directory or the bucket mounted (gcsfuse, s3fs-fuse); "
                          "nothing was created")
    if scheme in NO_CHECKPOINT_SCHEMES:
        raise ConfigError(f"--workdir={workdir}: {scheme}:// workdirs are not supported (Orbax's tensorstore "
                          "cannot write checkpoints there); use a local directory, gs://, s3:// or a mount; nothing "
                          "was created")
    raise ConfigError(f"--workdir={workdir}: unknown URL scheme {scheme}://; give a directory path, "
                      "file:///abs/path, gs:// or s3://; nothing was created")


def feature_width(model_config: ml_collections.ConfigDict) -> int:
    """d, the width of the features the head sees, as `models.get_model` builds it."""
    c = model_config
    if c.arch == "mlp":
        return int(c.widths[-1])
    if c.arch in ("resnet18", "resnet34"):
        return int(c.feature_dim or 8 * c.width)
    return int(c.feature_dim or 64)


def validate_data(config: ml_collections.ConfigDict, data: Any) -> None:
    """Checks a loaded `RegressionData` against the config; raises ConfigError naming the fields.

    Needs: n = data.target_dim <= d (the spec's `d >= n`), (M, H, W, C) inputs for a CNN, and with
    `train.drop_last` at least one full batch of training rows.
    """
    n, d = data.target_dim, feature_width(config.model)
    problems = []
    if n > d:
        problems.append(f"data set {data.name!r} has n={n} target dims but the model's feature width is d={d} "
                        f"(model.arch={config.model.arch!r}); NRC needs d >= n: widen the features "
                        f"({'model.widths[-1]' if config.model.arch == 'mlp' else 'model.feature_dim'})")
    if config.model.arch in CNN_ARCHS and len(data.input_shape) != 3:
        problems.append(f"model.arch={config.model.arch!r} needs image inputs (rows, H, W, C); data set "
                        f"{data.name!r} has inputs of shape (rows, {', '.join(map(str, data.input_shape))})")
    if config.train.drop_last and config.train.batch_size > data.train_size:
        problems.append(f"train.batch_size={config.train.batch_size} with train.drop_last=True: allowed at most "
                        f"the {data.train_size} training rows of {data.name!r}")
    if problems:
        raise ConfigError("\n  ".join(problems))


__all__ = ["validate_config", "validate_data", "field_rules", "feature_width", "Rule"]
