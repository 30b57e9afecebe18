"""UFM study: sweep c / lambda_min (lam_h = lam_w = sqrt(c)), closed form vs gradient descent.

Launch:
  python -m nrc_jax.ufm --config=configs/ufm.py                       # writes results/ufm/
  python -m nrc_jax.ufm --config=configs/ufm.py:quick --config.out_dir=/tmp/ufm_quick
  python -m nrc_jax.ufm --config=configs/ufm.py --config.synthetic.eigenvalues="(2.,1.,.5,.05)"
Outputs: nrc_vs_c.png, trajectories.png, gaps.csv, gaps.md, summary.json (see nrc_jax/ufm_study.py).
Expected runtime on the 2-core CPU: default about 30 s CPU (80 s wall on the shared, loaded
machine), mostly compilation and figures: the sweep's 10 solves take 15-65 iterations each and the
lambda = 0 run 10,000; `:quick` about half of that.

`solver_config()` holds every option of the first-order solver (`nrc_jax.core.ufm.gradient_descent`
takes them as its `options`); the study's `gd` and `trajectory` change a few of them.
"""
from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: None/"" (default) or "quick" (fewer samples, points and iterations)."""
    config = ml_collections.ConfigDict()
    config.out_dir = "results/ufm"
    config.seed = 0
    # Which targets: "synthetic" (embedded: Gaussian rows with the exact covariance spectrum below).
    # Real data sets (nrc_jax.data names) can be added here later.
    config.targets = "synthetic"
    config.synthetic = ml_collections.ConfigDict({
        "num_samples": 500,                 # M
        "eigenvalues": (1.0, 0.4, 0.1),     # spectrum of Sigma (n = its length), exact in the sample
        "mean": 1.0,                        # every target's mean (so the bias b matters)
    })
    config.d = 32  # feature width (>= n)
    # Sweep points c / lambda_min. Avoid exact eigenvalue ratios (here 1, 4 and 10): there a
    # direction switches off, the optimum is degenerate and first-order convergence is sublinear.
    config.ratios = (1e-3, 1e-2, 0.1, 0.3, 0.6, 1.5, 2.5, 6.0, 15.0, 40.0)
    # The sweep's solver options over `solver_config()` (tol and init_scale at its values, here so that
    # --config.gd.tol=... can change them; atol, momentum and balance keep theirs).
    solver = solver_config()
    config.gd = ml_collections.ConfigDict({"max_iters": 10_000, "tol": solver.tol, "log_every": 10,
                                           "init_scale": solver.init_scale})
    # trajectories.png: plain gradient descent (no balancing move, which would put H in W's row
    # space by construction, and no momentum) from a random start at the sweep point with this
    # c / lambda_min, and at lambda = 0 (which never meets a relative tolerance: its loss goes to
    # 0), each for zero_lambda_iters iterations with the `trajectory` options.
    config.trajectory_ratio = 1e-3
    config.zero_lambda_iters = 10_000
    config.trajectory = ml_collections.ConfigDict({"balance": False, "momentum": False})
    if arg == "quick":
        config.synthetic.num_samples = 100
        config.d = 8
        config.ratios = (1e-2, 0.3, 2.5, 40.0)
        config.gd.max_iters = 3_000
        config.zero_lambda_iters = 3_000
        config.trajectory_ratio = 0.3
    elif arg:
        raise ValueError(f"configs/ufm.py: unknown argument {arg!r}; use '' or 'quick'")
    return config


def solver_config() -> ml_collections.ConfigDict:
    """Every option of `nrc_jax.core.ufm.gradient_descent` (the method is described above its
    `_gradient_descent`): the solver's defaults."""
    return ml_collections.ConfigDict({
        "max_iters": 100_000,  # hard cap on iterations (static: sizes the history buffers)
        "tol": 1e-13,  # stop when L_H ||dH||^2 + L_W ||dW||^2 <= tol * loss (a relative stationarity)
        "atol": 0.0,  # ... or <= atol (for lam = 0, where the loss itself goes to 0)
        "log_every": 100,  # record the history every this many iterations (static)
        "init_scale": 1.0,  # rows of H and W start as N(0, init_scale^2 / d I_d): norm ~ init_scale
        "momentum": True,  # Nesterov-type extrapolation with restart; False gives plain block GD
        "balance": True,  # exact balancing move after each sweep when lam_h, lam_w > 0 (nrc_jax.core.ufm.balance)
    })
