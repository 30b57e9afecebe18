"""The metric core: pure `jax.numpy` mathematics, no I/O, no training state.

`metrics` (the checked public API of the NRC metrics; `stats` the sufficient statistics and moments,
`metric_core` statistics -> metrics, `linalg` and `checks` their helpers), `deep` (per-layer
metrics) and `ufm` (the regression Unconstrained Feature Model: loss, closed form, solver).

Imports: only `nrc_jax.core` and `nrc_jax.errors` (tests/test_imports.py checks it), so everything
here runs inside `jit`/`vmap` and from any layer above.
"""
