"""Model shapes (MLP, tiny ResNet, SmallCNN) and the loss/optimizer formulas of nrc_jax.engine.optim."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nrc_jax.engine import models, optim
from nrc_jax.errors import ConfigError


def model_config(**kw):
    c = models.default_model_config()
    c.update(kw)
    return c


def test_mlp_returns_prediction_features_hidden_and_ufm_mode_removes_last_relu():
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 5))
    for feature_activation in (True, False):
        model = models.get_model(model_config(widths=(6, 4), feature_activation=feature_activation), 3)
        variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
        pred, h, hidden = jax.jit(model.apply)(variables, x)
        assert pred.shape == (7, 3) and h.shape == (7, 4) and [a.shape for a in hidden] == [(7, 6), (7, 4)]
        w, b = models.head_params(variables["params"])
        np.testing.assert_allclose(pred, h @ w.T + b[None, :], rtol=1e-5, atol=1e-6)
        assert bool(jnp.all(hidden[0] >= 0))
        assert bool(jnp.all(h >= 0)) == feature_activation  # UFM mode: features can be negative


def test_head_without_bias():
    model = models.get_model(model_config(widths=(4,), head_bias=False), 2)
    variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
    assert "bias" not in variables["params"]["head"]
    assert models.head_params(variables["params"])[1].shape == (2,)


def test_narrow_head_gradients_match_plain_autodiff_and_vmap():
    """The head's weight gradient on the CPU is taken column by column (`narrow_dot_general`):
    the same values as autodiff of one dot, to float rounding, also vmapped over sweep members."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 16))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 3))
    g = jax.random.normal(jax.random.PRNGKey(2), (64, 3))
    dims = (((1,), (0,)), ((), ()))
    narrow = lambda x, k: jnp.sum(jnp.sin(models.narrow_dot_general(x, k, dims)) * g)
    plain = lambda x, k: jnp.sum(jnp.sin(jax.lax.dot_general(x, k, dims)) * g)
    np.testing.assert_array_equal(narrow(x[0], kernel[0]), plain(x[0], kernel[0]))
    got = jax.vmap(jax.grad(narrow, (0, 1)))(x, kernel)
    want = jax.vmap(jax.grad(plain, (0, 1)))(x, kernel)
    np.testing.assert_array_equal(got[0], want[0])  # the input gradient is autodiff's own
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
    wide = jax.random.normal(jax.random.PRNGKey(3), (16, models.NARROW_OUTPUTS + 1))
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda x: models.narrow_dot_general(x, wide, dims))(x[0]))
    traced = str(jax.make_jaxpr(lambda x: models.narrow_dot_general(x, kernel[0], dims))(x[0]))
    assert ("custom_vjp" in traced) == models.cpu_rewrites()  # the rewrite only on the CPU


def test_cpu_rewrites_follow_the_backend():
    assert models.cpu_rewrites() == (jax.default_backend() == "cpu")


@pytest.mark.parametrize("cpu", [True, False])
def test_head_path_follows_the_backend_and_gradients_agree(monkeypatch, cpu):
    """On the CPU the head's weight gradient is column by column; elsewhere the plain dot_general
    (no custom VJP in the program). A whole MLP's loss gradients agree between the two."""
    model = models.get_model(model_config(widths=(32, 16)), 3)
    x = jax.random.normal(jax.random.PRNGKey(0), (40, 5))
    y = jax.random.normal(jax.random.PRNGKey(1), (40, 3))
    params = model.init(jax.random.PRNGKey(2), x)["params"]
    loss = lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x)[0] - y))  # noqa: E731
    plain = jax.jit(jax.grad(loss))(params)  # traced before the switch: the process's backend
    monkeypatch.setattr(models, "cpu_rewrites", lambda: cpu)
    assert ("custom_vjp" in str(jax.make_jaxpr(loss)(params))) == cpu
    grad = jax.grad(lambda p: loss(p))  # a new function: traced again under the switch
    for got, want in zip(jax.tree.leaves(jax.jit(grad)(params)), jax.tree.leaves(plain)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["batch"])
def test_tiny_resnet_training_step(norm):
    # Two stages of one basic block each: the ResNet code path of resnet18/34 at a compile cost
    # a test can afford (the full depths are checked with eval_shape below).
    model = models.ResNet(stage_sizes=(1, 1), out_dim=2, width=2, stem="cifar", norm=norm)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3))
    y = jnp.ones((4, 2))
    variables = dict(jax.jit(model.init)(jax.random.PRNGKey(1), x))
    params = variables.pop("params")
    assert ("batch_stats" in variables) == (norm == "batch")

    @jax.jit
    def step(params, model_state):
        def loss(p):
            (pred, h, hidden), new_state = model.apply({"params": p, **model_state}, x, train=True,
                                                       mutable=list(model_state))
            return jnp.mean(jnp.sum((pred - y) ** 2, -1)), (new_state, h, hidden)
        (value, (new_state, h, hidden)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), new_state, value, h, hidden

    new_params, new_state, value, h, hidden = step(params, dict(variables))
    assert h.shape == (4, 4) and [a.shape[1] for a in hidden] == [2, 4]
    assert np.isfinite(float(value))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new_params)))
    if norm == "batch":  # running statistics were updated by the training step
        before = jax.tree.leaves(variables["batch_stats"])
        after = jax.tree.leaves(new_state["batch_stats"])
        assert any(not np.allclose(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("arch,stem,norm,feature_dim,d", [
    ("resnet18", "imagenet", "batch", 0, 512), ("resnet34", "cifar", "none", 7, 7)])
def test_resnet18_34_shapes(arch, stem, norm, feature_dim, d):
    model = models.get_model(model_config(arch=arch, stem=stem, norm=norm, feature_dim=feature_dim), 3)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    pred, h, hidden = jax.eval_shape(model.apply, variables, x)
    assert pred.shape == (2, 3) and h.shape == (2, d)
    assert [a.shape[1] for a in hidden[:4]] == [64, 128, 256, 512]
    blocks = [k for k in variables["params"] if k.startswith("stage")]
    assert len(blocks) == (8 if arch == "resnet18" else 16)


def test_small_cnn():
    x = jnp.zeros((2, 16, 16, 3))
    cnn = models.get_model(model_config(arch="small_cnn", channels=(4, 8), feature_dim=6), 2)
    pred, h, hidden = jax.jit(lambda x: cnn.apply(cnn.init(jax.random.PRNGKey(0), x), x))(x)
    assert pred.shape == (2, 2) and h.shape == (2, 6) and len(hidden) == 3


def test_unknown_arch_and_activation_raise_config_error():
    with pytest.raises(ConfigError, match="model.arch"):
        models.get_model(model_config(arch="vgg"), 1)
    model = models.get_model(model_config(activation="swish2"), 1)
    with pytest.raises(ConfigError, match="model.activation"):
        model.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))


def _params():
    return {"dense_0": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 1.0)},
            "head": {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.full((2,), 3.0)}}


def _hp(**kw):
    values = dict(lr=0.1, weight_decay=0.0, lambda_h=0.0, lambda_w=0.0)
    values.update(kw)
    return optim.HParams(**{k: jnp.asarray(v) for k, v in values.items()})


def test_paper_l2_includes_biases():
    c = optim.default_optim_config()
    params = _params()
    w = models.head_params(params)[0]
    expected = 0.5 * 0.01 * (6 * 4.0 + 3 * 1.0 + 6 * 0.25 + 2 * 9.0)  # every parameter, biases too
    got = optim.regularization(params, w, jnp.asarray(123.0), _hp(weight_decay=0.01), c)
    assert float(got) == pytest.approx(expected)
    grads = jax.grad(lambda p: optim.regularization(p, w, 0.0, _hp(weight_decay=0.01), c))(params)
    np.testing.assert_allclose(grads["head"]["bias"], 0.01 * params["head"]["bias"])
    c.decay_mode = "decoupled"
    assert float(optim.regularization(params, w, 1.0, _hp(weight_decay=0.01), c)) == 0.0


def test_ufm_terms_features_averaged_and_head_only():
    c = optim.default_optim_config()
    c.update(regularizer="ufm", weight_decay=0.0, lambda_h=0.1, lambda_w=0.2)
    params = _params()
    w = models.head_params(params)[0]
    h = jnp.arange(12.0).reshape(4, 3)
    mean_sq = optim.masked_mean(jnp.sum(h**2, -1), jnp.ones(4))
    got = optim.regularization(params, w, mean_sq, _hp(lambda_h=0.1, lambda_w=0.2), c)
    expected = 0.1 / (2 * 4) * float(jnp.sum(h**2)) + 0.2 / 2 * 6 * 0.25  # lambda_H/(2M)||H||^2 + lambda_W/2||W||^2
    assert float(got) == pytest.approx(expected)
    assert float(optim.masked_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([1.0, 1.0, 0.0]))) == 2.0


def test_check_optim_config_rejects_contradictions():
    c = optim.default_optim_config()
    c.lambda_h = 0.1
    with pytest.raises(ConfigError, match="lambda_h"):
        optim.check_optim_config(c)
    c.update(regularizer="ufm")
    with pytest.raises(ConfigError, match="weight_decay"):
        optim.check_optim_config(c)
    c.update(weight_decay=0.0, schedule="cosine")
    with pytest.raises(ConfigError, match="optim.schedule"):
        optim.check_optim_config(c)


def test_sgd_momentum_matches_pytorch_recurrence_and_decoupled_decay():
    c = optim.default_optim_config()
    c.update(momentum=0.9, decay_mode="decoupled")
    tx = optim.direction(c)
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.25])}
    state = tx.init(p)
    hp = _hp(lr=0.1, weight_decay=0.01)
    buf, expected = np.zeros(2), np.array([1.0, -2.0])
    for _ in range(2):
        p, state = optim.apply_update(tx, g, state, p, hp, jnp.asarray(1.0), c)
        buf = 0.9 * buf + np.array([0.5, 0.25])  # torch.optim.SGD(momentum=0.9)
        expected = expected - 0.1 * (buf + 0.01 * expected)
    np.testing.assert_allclose(p["w"], expected, rtol=1e-6)


def test_adam_direction_matches_optax_adam():
    c = optim.default_optim_config()
    c.update(name="adam", weight_decay=0.0)
    tx = optim.direction(c)
    reference = optax.adam(0.01)
    p = q = {"w": jnp.array([1.0, -2.0])}
    s, r = tx.init(p), reference.init(q)
    for g in ({"w": jnp.array([0.5, 0.25])}, {"w": jnp.array([-1.0, 2.0])}):
        p, s = optim.apply_update(tx, g, s, p, _hp(lr=0.01), jnp.asarray(1.0), c)
        u, r = reference.update(g, r, q)
        q = optax.apply_updates(q, u)
    np.testing.assert_allclose(p["w"], q["w"], rtol=1e-6)


def test_step_schedule_multiplies_by_decay_at_milestones():
    c = optim.default_optim_config()
    c.schedule = "step"
    factors = [float(optim.lr_factor(jnp.asarray(e), c, 100)) for e in (0, 49, 50, 74, 75, 99)]
    np.testing.assert_allclose(factors, [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    c.schedule = "constant"
    assert float(optim.lr_factor(jnp.asarray(99), c, 100)) == 1.0
