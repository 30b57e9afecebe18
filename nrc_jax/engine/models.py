"""Flax (linen) regression networks that expose their last-layer features.

Every model maps inputs (B, ...) to `(predictions (B, n), features (B, d), hidden)`, where
`features` is the input of the linear head (`predictions = features @ W.T + b`, W = (n, d)) and
`hidden` is a list of (B, d_i) per-layer features (for CNNs: each stage's output, globally
average-pooled), the last entry being `features`. `head_params(params)` returns (W, b).

Initialization (`init`): "flax" (Flax's defaults: lecun-normal kernels, zero biases) or "torch"
(PyTorch's `nn.Linear`/`nn.Conv2d` defaults, the authors' code: kernels and biases uniform in
+-1/sqrt(fan_in), fan_in = inputs x kernel area). Normalization layers start at scale 1, offset 0
either way.

Normalization in the ResNets (`norm`): "batch" (BatchNorm, running statistics in the
`batch_stats` collection, used at evaluation), "group" (GroupNorm, 32 groups or fewer) or "none".
Under data parallelism BatchNorm sees the whole global batch (XLA reduces over the sharded axis).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from nrc_jax.core.deep import LayerWeights
from nrc_jax.errors import ConfigError

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "silu": nn.silu, "elu": nn.elu,
    "identity": lambda x: x,
}
HEAD = "head"
INITS = ("flax", "torch")


# Dense layers with at most this many outputs (the regression heads: n <= 8 targets) get their
# weight gradient on the CPU as one matrix-vector product per output (`narrow_dot_general`).
NARROW_OUTPUTS = 8


def cpu_rewrites() -> bool:
    """Whether the CPU-only rewrites apply: the default backend (the mesh's devices) is the CPU.

    Those rewrites (`narrow_dot_general`'s column-by-column head gradient, `learner.shuffled_indices`'
    packed sort) were measured faster only on XLA:CPU; on GPU/TPU the plain ops run. Read at trace
    time; tests replace it to trace the other branch.
    """
    return jax.default_backend() == "cpu"


_MATMUL = (((1,), (0,)), ((), ()))  # dot_general dimension numbers of x (B, d) @ kernel (d, n)


@jax.custom_vjp
def _narrow_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.dot_general(x, kernel, _MATMUL)


def _narrow_matmul_fwd(x: jax.Array, kernel: jax.Array):
    return jax.lax.dot_general(x, kernel, _MATMUL), (x, kernel)


def _narrow_matmul_bwd(residuals, g: jax.Array):
    x, kernel = residuals
    dx = jax.lax.dot_general(g, kernel, (((1,), (1,)), ((), ())))  # what autodiff gives
    # x^T g with few columns (256 x 256 x 3) takes XLA:CPU ~130 us as one dot and ~14 us as three
    # matrix-vector products: ~5% of a Hopper-size training epoch (results/bench.md).
    dkernel = jnp.stack([g[:, j] @ x for j in range(g.shape[1])], axis=1)
    return dx, dkernel


_narrow_matmul.defvjp(_narrow_matmul_fwd, _narrow_matmul_bwd)


def narrow_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                       preferred_element_type=None) -> jax.Array:
    """`lax.dot_general` for `nn.Dense(dot_general=...)`: the same product, with the weight gradient
    of a narrow (<= NARROW_OUTPUTS outputs) 2-D Dense taken column by column when `cpu_rewrites()`;
    on other backends exactly `lax.dot_general`. lhs (B, d), rhs (d, n) -> (B, n)."""
    narrow = (lhs.ndim == 2 and rhs.ndim == 2 and rhs.shape[1] <= NARROW_OUTPUTS and precision is None
              and preferred_element_type is None and dimension_numbers == _MATMUL)
    if narrow and cpu_rewrites():
        return _narrow_matmul(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)


def _uniform(bound: float) -> Callable:
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def initializers(init: str, fan_in: int) -> dict[str, Callable]:
    """`kernel_init`/`bias_init` keyword arguments of a Dense or Conv with `fan_in` inputs per output
    (in_features, or in_channels * kernel area); {} for Flax's defaults."""
    if init == "flax":
        return {}
    if init == "torch":
        # variance 1/(3 fan_in) uniform = U(+-1/sqrt(fan_in)), PyTorch's kaiming_uniform(a=sqrt(5))
        return {"kernel_init": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                "bias_init": _uniform(1.0 / fan_in**0.5)}
    raise ConfigError(f"model.init={init!r}: allowed {INITS}")


def _dense(features: int, x: jax.Array, init: str, name: str, **kwargs) -> jax.Array:
    """nn.Dense(features) applied to x (B, fan_in) with the `init` scheme."""
    return nn.Dense(features, name=name, **initializers(init, x.shape[-1]), **kwargs)(x)


def _conv(features: int, kernel: tuple[int, int], strides: int, x: jax.Array, init: str, name: str,
          use_bias: bool = True, padding: Any = "SAME") -> jax.Array:
    """nn.Conv applied to x (B, H, W, C) with the `init` scheme."""
    fan_in = x.shape[-1] * kernel[0] * kernel[1]
    return nn.Conv(features, kernel, strides, padding=padding, use_bias=use_bias, name=name,
                   **initializers(init, fan_in))(x)


def _head(out_dim: int, use_bias: bool, h: jax.Array, init: str) -> jax.Array:
    """The linear regression head applied to the features h (B, d), W = kernel.T (n, d)."""
    return _dense(out_dim, h, init, HEAD, use_bias=use_bias, dot_general=narrow_dot_general)


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation={name!r}: allowed {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Fully connected body + linear head.

    Attributes:
      widths: hidden widths; the last one is the feature dimension d.
      out_dim: n, the target dimension.
      activation: name in ACTIVATIONS.
      feature_activation: apply the activation to the last hidden layer (the features). False is the
        UFM-regularized setting of the paper (the ReLU before the features removed).
      head_bias: whether the head has a bias b.
      init_scheme: "flax" or "torch" (model.init; module docstring).
    """

    widths: Sequence[int]
    out_dim: int
    activation: str = "relu"
    feature_activation: bool = True
    head_bias: bool = True
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        act = _activation(self.activation)
        h = x.reshape(x.shape[0], -1)
        hidden = []
        for i, width in enumerate(self.widths):
            h = _dense(width, h, self.init_scheme, f"dense_{i}")
            if i < len(self.widths) - 1 or self.feature_activation:
                h = act(h)
            hidden.append(h)
        prediction = _head(self.out_dim, self.head_bias, h, self.init_scheme)
        return prediction, h, hidden


def _norm_layer(norm: str, train: bool, name: str) -> Callable[[jax.Array], jax.Array]:
    if norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    if norm == "group":
        return lambda x: nn.GroupNorm(num_groups=min(32, x.shape[-1]), name=name)(x)
    if norm == "none":
        return lambda x: x
    raise ConfigError(f"model.norm={norm!r}: allowed 'batch', 'group', 'none'")


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), projection shortcut when the shape changes."""

    channels: int
    strides: int
    norm: str
    activation: str
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = _activation(self.activation)
        y = _conv(self.channels, (3, 3), self.strides, x, self.init_scheme, "conv1", use_bias=False, padding=1)
        y = act(_norm_layer(self.norm, train, "norm1")(y))
        y = _conv(self.channels, (3, 3), 1, y, self.init_scheme, "conv2", use_bias=False, padding=1)
        y = _norm_layer(self.norm, train, "norm2")(y)
        if x.shape[-1] != self.channels or self.strides != 1:
            x = _conv(self.channels, (1, 1), self.strides, x, self.init_scheme, "shortcut", use_bias=False)
            x = _norm_layer(self.norm, train, "norm_shortcut")(x)
        return act(x + y)


class ResNet(nn.Module):
    """ResNet18/34-style network (NHWC inputs) with a linear regression head.

    Attributes:
      stage_sizes: blocks per stage, (2, 2, 2, 2) for ResNet18, (3, 4, 6, 3) for ResNet34.
      width: channels of the first stage; stage i has width * 2**i channels.
      feature_dim: d. 0 means the pooled last stage (8 * width, 512 for width 64, as in the
        paper); otherwise a Dense(feature_dim) + activation after the pooling.
      stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool, for 224x224) or "cifar" (3x3/1 conv, small
        images).
    """

    stage_sizes: Sequence[int]
    out_dim: int
    width: int = 64
    feature_dim: int = 0
    norm: str = "batch"
    stem: str = "imagenet"
    activation: str = "relu"
    feature_activation: bool = True
    head_bias: bool = True
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        act = _activation(self.activation)
        if self.stem == "imagenet":
            x = _conv(self.width, (7, 7), 2, x, self.init_scheme, "stem_conv", use_bias=False, padding=3)
            x = act(_norm_layer(self.norm, train, "stem_norm")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        elif self.stem == "cifar":
            x = _conv(self.width, (3, 3), 1, x, self.init_scheme, "stem_conv", use_bias=False, padding=1)
            x = act(_norm_layer(self.norm, train, "stem_norm")(x))
        else:
            raise ConfigError(f"model.stem={self.stem!r}: allowed 'imagenet', 'cifar'")
        hidden = []
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(self.width * 2**i, strides, self.norm, self.activation, self.init_scheme,
                               name=f"stage{i}_block{j}")(x, train)
            hidden.append(jnp.mean(x, axis=(1, 2)))
        h = hidden[-1]
        if self.feature_dim:
            h = _dense(self.feature_dim, h, self.init_scheme, "feature_dense")
            if self.feature_activation:
                h = act(h)
            hidden.append(h)
        prediction = _head(self.out_dim, self.head_bias, h, self.init_scheme)
        return prediction, h, hidden


class SmallCNN(nn.Module):
    """A few conv layers (3x3, stride 2) + global average pool + Dense features, for quick runs."""

    out_dim: int
    channels: Sequence[int] = (16, 32, 64)
    feature_dim: int = 64
    activation: str = "relu"
    feature_activation: bool = True
    head_bias: bool = True
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        act = _activation(self.activation)
        hidden = []
        for i, c in enumerate(self.channels):
            x = act(_conv(c, (3, 3), 2, x, self.init_scheme, f"conv_{i}", padding=1))
            hidden.append(jnp.mean(x, axis=(1, 2)))
        h = _dense(self.feature_dim, jnp.mean(x, axis=(1, 2)), self.init_scheme, "feature_dense")
        if self.feature_activation:
            h = act(h)
        hidden.append(h)
        prediction = _head(self.out_dim, self.head_bias, h, self.init_scheme)
        return prediction, h, hidden


ARCHS = ("mlp", "resnet18", "resnet34", "small_cnn")


def get_model(model_config: ml_collections.ConfigDict, out_dim: int) -> nn.Module:
    """Builds the model named by `model_config.arch` (one of ARCHS) with n = `out_dim` outputs."""
    c = model_config
    if c.init not in INITS:
        raise ConfigError(f"model.init={c.init!r}: allowed {INITS}")
    common = dict(out_dim=out_dim, activation=c.activation, feature_activation=c.feature_activation,
                  head_bias=c.head_bias, init_scheme=c.init)
    if c.arch == "mlp":
        return MLP(widths=tuple(c.widths), **common)
    if c.arch in ("resnet18", "resnet34"):
        stages = (2, 2, 2, 2) if c.arch == "resnet18" else (3, 4, 6, 3)
        return ResNet(stage_sizes=stages, width=c.width, feature_dim=c.feature_dim, norm=c.norm,
                      stem=c.stem, **common)
    if c.arch == "small_cnn":
        return SmallCNN(channels=tuple(c.channels), feature_dim=c.feature_dim or 64, **common)
    raise ConfigError(f"model.arch={c.arch!r}: allowed {ARCHS}")


def default_model_config() -> ml_collections.ConfigDict:
    """Every field `get_model` reads; the paper's MuJoCo MLP (3 x 256, ReLU, head with bias)."""
    return ml_collections.ConfigDict({
        "arch": "mlp",
        "widths": (256, 256, 256),     # mlp
        "activation": "relu",
        "feature_activation": True,    # False: UFM-regularized networks (no ReLU before features)
        "head_bias": True,
        "init": "flax",                # flax (lecun-normal, zero bias) | torch (PyTorch defaults, the authors' code)
        "width": 64,                   # resnet: first-stage channels
        "feature_dim": 0,              # resnet: 0 = pooled last stage; small_cnn: 0 = 64
        "norm": "batch",               # resnet: batch | group | none
        "stem": "imagenet",            # resnet: imagenet | cifar
        "channels": (16, 32, 64),      # small_cnn
    })


def head_params(params: Any) -> tuple[jax.Array, jax.Array]:
    """(W (n, d), b (n,)) of the linear head; b is zeros when the head has no bias."""
    head = params[HEAD]
    w = head["kernel"].T
    b = head.get("bias", jnp.zeros(w.shape[0], w.dtype))
    return w, b


def _dense_matrix(params: Any, name: str) -> jax.Array:
    return params[name]["kernel"].T


def _conv_matrix(kernel: jax.Array) -> jax.Array:
    """(kh, kw, c_in, c_out) -> (c_out, kh*kw*c_in), the matrix of the convolution on patches."""
    return kernel.reshape(-1, kernel.shape[-1]).T


def _conv_constant_input(kernel: jax.Array) -> jax.Array:
    """(kh, kw, c_in, c_out) -> (c_out, c_in): the convolution applied to a spatially constant input."""
    return jnp.sum(kernel, axis=(0, 1)).T


def layer_weights(params: Any, model_config: Any) -> list[LayerWeights]:
    """LayerWeights of every hidden layer of `get_model(model_config, n)`, in depth order (one entry
    per element of the model's `hidden` list; `nrc_jax.core.deep`'s docstring says which weights)."""
    arch = model_config.arch
    head = head_params(params)[0]
    if arch == "mlp":
        names = [f"dense_{i}" for i in range(len(model_config.widths))]
        own = [_dense_matrix(params, name) for name in names]
        return [LayerWeights(w, r) for w, r in zip(own, own[1:] + [head])]
    if arch == "small_cnn":
        convs = [params[f"conv_{i}"]["kernel"] for i in range(len(model_config.channels))]
        feature = _dense_matrix(params, "feature_dense")
        readers = [_conv_constant_input(k) for k in convs[1:]] + [feature, head]
        return [LayerWeights(w, r) for w, r in zip([_conv_matrix(k) for k in convs] + [feature], readers)]
    if arch in ("resnet18", "resnet34"):
        stages = (2, 2, 2, 2) if arch == "resnet18" else (3, 4, 6, 3)
        own = [_conv_matrix(params[f"stage{s}_block{b - 1}"]["conv2"]["kernel"]) for s, b in enumerate(stages)]
        readers = [_conv_constant_input(params[f"stage{s}_block0"]["conv1"]["kernel"]) for s in range(1, len(stages))]
        if model_config.feature_dim:
            feature = _dense_matrix(params, "feature_dense")
            return [LayerWeights(w, r) for w, r in zip(own + [feature], readers + [feature, head])]
        return [LayerWeights(w, r) for w, r in zip(own, readers + [head])]
    raise ConfigError(f"model.arch={arch!r}: per-layer weights known for mlp, small_cnn, resnet18, resnet34")


def has_batch_norm(model_config: ml_collections.ConfigDict) -> bool:
    return model_config.arch in ("resnet18", "resnet34") and model_config.norm == "batch"


__all__ = ["MLP", "ResNet", "SmallCNN", "BasicBlock", "ARCHS", "INITS", "initializers", "get_model",
           "default_model_config", "head_params", "layer_weights", "has_batch_norm", "cpu_rewrites",
           "narrow_dot_general"]
