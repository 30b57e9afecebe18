"""The functional training core: networks, optimizer, sweeps and the two engines under one driver.

`models` (Flax networks, their head and per-layer weights), `optim` (loss regularization, optax
chains, schedules), `sweeps` (a config -> its K members), `learner` (what both engines compile: the
state, mesh, shuffles, loss, step and metric rows), `memory` and `streamed` (the two `Engine`s) and
`train` (the driver, `train_and_evaluate`).

Imports: `nrc_jax.core`, `nrc_jax.data`, `nrc_jax.io` (checkpoints, run files, writers) and
`nrc_jax.errors`; never an entry point or `nrc_jax.plotting` (tests/test_imports.py checks it).
"""
