"""Config and data validation: every bad field is refused before loading or compiling, by name."""
import glob
import importlib.util
import os

import ml_collections
import numpy as np
import pytest

from configs import mlp
from nrc_jax.data import RegressionData, known_datasets
from nrc_jax.engine import train
from nrc_jax.errors import ConfigError, UserError
from nrc_jax.io import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_fields(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted fields replaced; rebuilt from a dict so a value may change type
    (as it can in a config file), which assignment to a ConfigDict would refuse."""
    d = config.to_dict()
    for path, value in fields.items():
        node = d
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return ml_collections.ConfigDict(d)


def config_arguments(module) -> list[str]:
    """The arguments a config lists (experiment_names(), PAPER or SETS names; else ""), each also
    with ',quick'."""
    if hasattr(module, "experiment_names"):
        names = list(module.experiment_names())
    else:
        names = list(getattr(module, "PAPER", None) or getattr(module, "SETS", None) or [""])
    return names + [",".join(filter(None, (name, "quick"))) for name in names]


def training_configs():
    """Every config in configs/ that the trainer runs (it has train and optim), with each argument
    it lists."""
    out = []
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for arg in config_arguments(module):
            try:
                config = module.get_config(arg)
            except ValueError:  # an argument this config does not take
                continue
            if "train" in config and "optim" in config:
                out.append(pytest.param(config, id=f"{os.path.basename(path)}:{arg}"))
    return out


@pytest.mark.parametrize("config", training_configs())
def test_shipped_configs_are_valid(config):
    validate.validate_config(config, num_devices=8)
    validate.validate_config(config, num_devices=1)


BAD_FIELDS = [
    # (field, bad value, text the message must hold besides the field name)
    ("optim.weight_decay", -1e-4, ">= 0"),
    ("optim.lr", 0.0, "> 0"),
    ("optim.lr", -1e-3, "> 0"),
    ("optim.lr", float("nan"), "finite"),
    ("optim.lambda_h", -0.5, ">= 0"),
    ("optim.momentum", 1.0, "[0, 1)"),
    ("optim.eps", 0.0, "> 0"),
    ("optim.decay_factor", -0.1, "> 0"),
    ("optim.name", "rmsprop", "'adam'"),
    ("optim.schedule", "cosine", "'step'"),
    ("optim.milestones", (0.5, 1.5), "(0, 1]"),
    ("train.batch_size", 0, ">= 1"),
    ("train.batch_size", "32", "an integer"),
    ("train.batch_size", 32.0, "an integer"),
    ("train.epochs", 0, ">= 1"),
    ("train.eval_every", 0, ">= 1"),
    ("train.checkpoint_every", -10, ">= 1"),
    ("train.max_to_keep", 0, ">= 1"),
    ("train.progress_bar", "yes", "True or False"),
    ("train.drop_last", 1, "True or False"),
    ("data.name", "no_such_set", "'swimmer'"),
    ("data.target_transform", "log", "'standardize'"),
    ("data.action_noise", -0.1, ">= 0"),
    ("model.arch", "vit", "'resnet18'"),
    ("model.activation", "swish", "'relu'"),
    ("model.widths", (), "non-empty"),
    ("model.norm", "layer", "'group'"),
    ("metrics.evr_k", 0, ">= 1"),
    ("metrics.pca_iters", -1, ">= 0"),
    ("sweep.mode", "grid", "'zip'"),
    ("mesh.num_devices", 0, "-1 (every device)"),
    ("seed", -1, ">= 0"),
    ("seed", 2**40, "<= 2147483647"),
]


@pytest.mark.parametrize("field,value,allowed", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_bad_field_is_named_with_value_and_what_is_allowed(field, value, allowed):
    config = with_fields(mlp.get_config(), **{field: value})
    with pytest.raises(ConfigError) as info:
        validate.validate_config(config, num_devices=8)
    message = str(info.value)
    assert f"{field}={value!r}" in message
    assert "allowed" in message and allowed in message


@pytest.mark.parametrize("field,values,bad_index", [
    ("sweep.weight_decay", (1e-2, 5e-3, -1e-3), 2),
    ("sweep.lr", (0.1, 0.0), 1),
    ("sweep.lambda_h", (-1.0,), 0),
    ("sweep.lambda_w", (0.1, float("inf")), 1),
    ("sweep.seed", (0, -3), 1),
    ("model.widths", (16, 0, 16), 1),
])
def test_bad_tuple_entry_is_named_by_index(field, values, bad_index):
    config = with_fields(mlp.get_config(), **{field: values})
    with pytest.raises(ConfigError, match=rf"{field}\[{bad_index}\]={values[bad_index]!r}.*allowed") as info:
        validate.validate_config(config)
    assert f"{field}={values!r}" in str(info.value)


def test_every_problem_is_listed_in_one_error():
    config = with_fields(mlp.get_config(), **{"optim.weight_decay": -1.0, "train.batch_size": 0, "optim.lr": -2.0})
    with pytest.raises(ConfigError) as info:
        validate.validate_config(config)
    message = str(info.value)
    assert message.startswith("invalid config:")
    for field in ("optim.weight_decay=-1.0", "train.batch_size=0", "optim.lr=-2.0"):
        assert field in message


def test_missing_field_is_named():
    d = mlp.get_config().to_dict()
    del d["train"]["eval_chunk"]
    with pytest.raises(ConfigError, match=r"train.eval_chunk is missing from the config"):
        validate.validate_config(ml_collections.ConfigDict(d))


def test_unknown_data_set_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        validate.validate_config(with_fields(mlp.get_config(), **{"data.name": "halfcheetah"}))
    assert "data.name='halfcheetah'" in str(info.value)
    assert all(repr(name) in str(info.value) for name in known_datasets())


@pytest.mark.parametrize("fields,expected", [
    ({"train.epochs": 50, "train.eval_every": 60, "train.checkpoint_every": 60},
     r"train.eval_every=60: allowed 1 <= train.eval_every <= train.epochs=50"),
    ({"train.eval_every": 10, "train.checkpoint_every": 25}, r"train.checkpoint_every=25: allowed a multiple of train.eval_every=10"),
    ({"optim.schedule": "step", "optim.milestones": (0.75, 0.5)}, r"optim.milestones=\(0.75, 0.5\): allowed increasing"),
    ({"sweep.mode": "zip", "sweep.lr": (0.1, 0.2), "sweep.seed": (0, 1, 2)}, r"sweep.mode='zip'.*one length"),
    ({"optim.regularizer": "ufm", "optim.weight_decay": 1e-2}, r"optim.weight_decay=0.01 with optim.regularizer='ufm'"),
    ({"optim.lambda_h": 0.1}, r"optim.lambda_h=0.1.*only used with optim.regularizer='ufm'"),
])
def test_fields_that_contradict_each_other(fields, expected):
    with pytest.raises(ConfigError, match=expected):
        validate.validate_config(with_fields(mlp.get_config(), **fields), num_devices=8)


def test_batch_must_divide_over_the_devices():
    config = with_fields(mlp.get_config(), **{"train.batch_size": 30})
    validate.validate_config(config, num_devices=None)  # device checks skipped
    validate.validate_config(config, num_devices=1)
    with pytest.raises(ConfigError, match=r"train.batch_size=30: allowed a multiple of the 8 devices.*e.g. 32"):
        validate.validate_config(config, num_devices=8)
    with pytest.raises(ConfigError, match=r"multiple of the 4 devices.*mesh.num_devices=4"):
        validate.validate_config(with_fields(config, **{"mesh.num_devices": 4}), num_devices=8)
    validate.validate_config(with_fields(config, **{"mesh.num_devices": 2}), num_devices=8)
    with pytest.raises(ConfigError, match=r"mesh.num_devices=16: allowed -1 \(all\) or 1..8"):
        validate.validate_config(with_fields(config, **{"mesh.num_devices": 16, "train.batch_size": 32}), num_devices=8)


def tabular(n_targets: int, rows: int = 40, features: int = 5) -> RegressionData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = rng.normal(size=(rows, n_targets)).astype(np.float32)
    return RegressionData("npz", x, y, x[:10], y[:10])


def test_data_checked_against_the_config():
    config = with_fields(mlp.get_config(), **{"model.widths": (16, 2), "train.batch_size": 32})
    validate.validate_data(config, tabular(2))
    with pytest.raises(ConfigError, match=r"n=3 target dims but the model's feature width is d=2.*model.widths\[-1\]"):
        validate.validate_data(config, tabular(3))
    cnn = with_fields(config, **{"model.arch": "small_cnn", "model.feature_dim": 8})
    with pytest.raises(ConfigError, match=r"model.arch='small_cnn' needs image inputs.*\(rows, 5\)"):
        validate.validate_data(cnn, tabular(2))
    with pytest.raises(ConfigError, match=r"n=9 target dims.*d=8.*model.feature_dim"):
        validate.validate_data(cnn, tabular(9))
    drop = with_fields(config, **{"train.drop_last": True, "train.batch_size": 64})
    with pytest.raises(ConfigError, match=r"train.batch_size=64 with train.drop_last=True: allowed at most the 40"):
        validate.validate_data(drop, tabular(2))


def test_feature_width_follows_the_model():
    model = mlp.get_config().model
    assert validate.feature_width(model) == 256
    assert validate.feature_width(with_fields(mlp.get_config(), **{"model.arch": "resnet18"}).model) == 512
    assert validate.feature_width(with_fields(mlp.get_config(), **{"model.arch": "resnet34", "model.feature_dim": 7}).model) == 7
    assert validate.feature_width(with_fields(mlp.get_config(), **{"model.arch": "small_cnn"}).model) == 64


def test_training_refuses_a_bad_config_before_loading_data_or_compiling(tmp_path, monkeypatch):
    def reached(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} before the config was checked")
        return fail

    monkeypatch.setattr(train, "load_dataset", reached("loaded data"))  # an engine is built from loaded data
    monkeypatch.setattr(train, "build_engine", reached("built an engine"))
    config = with_fields(mlp.get_config(), **{"optim.weight_decay": -1e-3, "data.name": "npz",
                                              "data.path": str(tmp_path / "does_not_exist.npz")})
    with pytest.raises(ConfigError, match="optim.weight_decay=-0.001"):  # not the DataError of the path
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    assert issubclass(ConfigError, UserError)
