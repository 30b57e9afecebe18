"""Plot building blocks behind `python -m nrc_jax.plot`: workdir reading, grouping, figures, Table 1."""
