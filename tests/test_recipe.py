"""The authors' recipe: mean-reduced loss, PyTorch initialization, every NRC definition by name."""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import mlp, mujoco, paper
from nrc_jax.engine import learner, memory, models, sweeps, train
from nrc_jax.io import run_files
from tests.test_train import npz_path, tiny_config  # noqa: F401 (fixture)

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "nrc.md")


def _trained_params(config, num_epochs: int):
    data = train.load_dataset(config.data)
    mesh = learner.make_mesh(1)
    trainer = memory.Trainer(config, mesh, data.input_shape, data.target_dim)
    members = sweeps.sweep_members(config)
    state = trainer.create_state(members)
    state, _ = trainer.train_chunk(state, memory.put_data(data, mesh, 64), jnp.asarray(num_epochs, jnp.int32))
    return jax.device_get(state.params)


def test_mean_reduction_at_lr_wd_equals_sum_reduction_at_lr_over_n_and_n_wd(npz_path):
    """SGD on 0.5*mean + 0.5*wd*||theta||^2 takes the steps of 0.5*sum + 0.5*(n wd)||theta||^2 at lr/n."""
    n = 2  # the tiny data set's target dim
    lr, wd = 0.05, 0.01
    mean = tiny_config(npz_path, **{"optim.mse_reduction": "mean", "optim.lr": lr, "optim.weight_decay": wd})
    summed = tiny_config(npz_path, **{"optim.mse_reduction": "sum", "optim.lr": lr / n, "optim.weight_decay": n * wd})
    other = tiny_config(npz_path, **{"optim.mse_reduction": "sum", "optim.lr": lr, "optim.weight_decay": wd})
    a, b, c = (_trained_params(cfg, 5) for cfg in (mean, summed, other))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c))) > 1e-3


def _model_config(**overrides) -> ml_collections.ConfigDict:
    c = models.default_model_config()
    c.update(overrides)
    return c


@pytest.mark.parametrize("arch,shape,conv", [("mlp", (1, 40), False), ("small_cnn", (1, 8, 8, 3), True)])
def test_torch_init_is_uniform_in_plus_minus_one_over_sqrt_fan_in(arch, shape, conv):
    model = models.get_model(_model_config(arch=arch, init="torch", widths=(300, 200), channels=(32,),
                                           feature_dim=128), 2)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros(shape))["params"]
    checked = 0
    for path, kernel in jax.tree_util.tree_flatten_with_path(params)[0]:
        if path[-1].key != "kernel":
            continue
        fan_in = int(np.prod(kernel.shape[:-1]))
        bound = 1.0 / np.sqrt(fan_in)
        layer = params[path[0].key]
        for values in (np.asarray(kernel).ravel(), np.asarray(layer["bias"])):
            assert np.all(np.abs(values) <= bound)
            if values.size >= 200:  # uniform on [-b, b]: std b/sqrt(3), mean |x| b/2
                np.testing.assert_allclose(values.std(), bound / np.sqrt(3), rtol=0.12)
                np.testing.assert_allclose(np.abs(values).mean(), bound / 2, rtol=0.12)
        assert np.any(np.asarray(layer["bias"]) != 0)
        checked += 1
    assert checked >= (2 if conv else 3)


def test_flax_init_keeps_zero_biases_and_larger_weights():
    model = models.get_model(_model_config(init="flax", widths=(300,)), 2)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 40)))["params"]
    assert not np.any(np.asarray(params["dense_0"]["bias"]))
    np.testing.assert_allclose(np.asarray(params["dense_0"]["kernel"]).std(), 1 / np.sqrt(40), rtol=0.1)


def test_torch_init_matches_pytorch_linear_bounds():
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(40, 300)
    bound = 1 / np.sqrt(40)
    for values in (layer.weight.detach().numpy(), layer.bias.detach().numpy()):
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.9 * bound
    ours = models.get_model(_model_config(init="torch", widths=(300,)), 2).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 40)))["params"]["dense_0"]
    np.testing.assert_allclose(np.asarray(ours["kernel"]).std(), layer.weight.detach().numpy().std(), rtol=0.1)


@pytest.mark.parametrize("name", ["fig2_swimmer", "fig5_wd_hopper", "fig6_ufm_reacher"])
def test_paper_configs_use_the_authors_recipe(name):
    for config in (paper.get_config(name), paper.get_config(name + ",quick")):
        assert config.optim.mse_reduction == "mean" and config.model.init == "torch"
    assert mujoco.get_config("swimmer").optim.mse_reduction == "mean"
    assert mlp.get_config().optim.mse_reduction == "sum" and mlp.get_config().model.init == "flax"


def test_log_spaced_evaluations_join_the_regular_ones():
    config = mlp.get_config()
    config.train.update(epochs=1000, eval_every=250, eval_log_points=10)
    epochs = train.eval_epochs(0, config)
    assert {1, 2, 5, 10, 22, 46, 100, 215, 464, 250, 500, 750, 1000} <= set(epochs)
    assert epochs == sorted(set(epochs)) and train.eval_epochs(464, config) == [500, 750, 1000]


def _documented_names() -> list[str]:
    """The metrics.jsonl names in the first column of docs/nrc.md's definition table."""
    with open(DOCS) as f:
        text = f.read()
    table = text[text.index("<!-- definitions -->"):text.index("<!-- /definitions -->")]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.M)


def test_every_documented_definition_is_logged_and_every_logged_nrc_is_documented(npz_path, tmp_path):
    config = tiny_config(npz_path)
    result = train.train_and_evaluate(config, str(tmp_path))
    row = result["members"][0]
    documented = _documented_names()
    assert len(documented) >= 14
    missing = [name for name in documented if name not in row]
    assert not missing, missing
    logged = [k for k in row if k.startswith(("nrc", "evr"))]
    assert not [k for k in logged if k not in documented]
    first = run_files.read_metrics(str(tmp_path))[0]
    assert first["nrc3_gamma"] == row["nrc3_gamma"]  # one gamma, the final one, for every epoch


def test_paper_variants_for_the_long_runs_and_ablations():
    config = paper.get_config("fig2_swimmer,tenth,seed0,with_zero")
    assert config.train.epochs == 100_000 and config.train.eval_every == 100
    assert config.train.checkpoint_every % config.train.eval_every == 0 and config.train.eval_log_points == 200
    assert tuple(config.sweep.weight_decay) == (1e-2, 0.0) and not config.sweep.seed
    ufm = paper.get_config("fig6_ufm_hopper,seed0")
    assert ufm.sweep.seed == (0,) * 5 and ufm.sweep.lambda_h == paper.UFM_LAMBDAS
    later = paper.get_config("fig2_hopper,tenth,seed2,seed1,with_zero")
    assert later.sweep.seed == (1, 2) and tuple(later.sweep.weight_decay) == (1e-2, 0.0)
    assert later.train.epochs == 20_000
    ufm_later = paper.get_config("fig6_ufm_reacher,seed1")
    assert ufm_later.sweep.seed == (1,) * 5 and ufm_later.sweep.lambda_w == paper.UFM_LAMBDAS
    ablation = paper.get_config("fig2_swimmer,hundredth,paper_like_actions,no_feature_relu")
    assert ablation.train.epochs == 10_000 and ablation.data.action_noise == paper.PAPER_LIKE_ACTION_NOISE
    assert not ablation.model.feature_activation and ablation.sweep.seed == paper.SEEDS
    with pytest.raises(ValueError, match="option"):
        paper.get_config("fig2_swimmer,twentieth")
