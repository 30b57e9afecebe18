"""nrc_jax: Neural Regression Collapse in JAX/Flax."""

__version__ = "0.1.0"
