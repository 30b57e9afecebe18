"""The edges of a run: what touches files, processes and hosts.

Workdir files (`run_files`: names and readers; `writers`: metrics.jsonl, summary.json, config.json;
`tensorboard`; `summary`; `progress`), `checkpoints` (Orbax), `locking` (one writer per workdir),
`distributed` (multi-host start-up and collective compilation), `validate` (a config checked
before anything runs) and `config_files` (config modules by path).

Imports: `nrc_jax.core`, `nrc_jax.data`, `nrc_jax.errors` and the engine's definitions a config
names (`engine.models`, `engine.optim`, `engine.sweeps`); never the learner, the engines, the driver,
an entry point or `nrc_jax.plotting` (tests/test_imports.py checks it).
"""
