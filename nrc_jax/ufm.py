"""Command line of the UFM study: `python -m nrc_jax.ufm --config=configs/ufm.py [--config.x=y ...]`.

The mathematics is `nrc_jax.core.ufm`; the sweep, figures and tables `nrc_jax.ufm_study`.
"""
from nrc_jax import ufm_study

if __name__ == "__main__":
    raise SystemExit(ufm_study.main())
