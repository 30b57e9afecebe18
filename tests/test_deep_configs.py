"""configs/sgemm.py and configs/deep_mlp.py: SGEMM on a tiny csv written here in the release's
layout (the real csv is not available offline), with per-layer metrics; config arguments."""
import numpy as np
import pytest

SGEMM_HEADER = ("MWG,NWG,KWG,MDIMC,NDIMC,MDIMA,NDIMB,KWI,VWM,VWN,STRM,STRN,SA,SB,"
                "Run1 (ms),Run2 (ms),Run3 (ms),Run4 (ms)")


def write_tiny_sgemm_csv(path, rows=60, seed=0):
    """The release's layout: the header, 14 integer kernel parameters, 4 run times in ms."""
    rng = np.random.default_rng(seed)
    params = np.column_stack([rng.choice([16, 32, 64, 128], rows), rng.choice([16, 32, 64, 128], rows),
                              rng.choice([16, 32], rows), rng.choice([8, 16, 32], rows),
                              rng.choice([8, 16, 32], rows), rng.choice([8, 16, 32], rows),
                              rng.choice([8, 16, 32], rows), rng.choice([2, 8], rows),
                              rng.choice([1, 2, 4, 8], rows), rng.choice([1, 2, 4, 8], rows),
                              rng.integers(0, 2, (rows, 4))])
    base = 20.0 + params[:, 0] * params[:, 1] / 64.0 + 5.0 * params[:, 10]
    runs = base[:, None] * (1.0 + 0.01 * rng.normal(size=(rows, 4)))
    with open(path, "w") as f:
        f.write(SGEMM_HEADER + "\n")
        for p, r in zip(params, runs):
            f.write(",".join(str(int(v)) for v in p) + "," + ",".join(f"{v:.2f}" for v in r) + "\n")


def test_sgemm_config_runs_on_a_tiny_csv_with_per_layer_metrics(tmp_path):
    from configs import deep_mlp, sgemm
    from nrc_jax.engine import train
    from nrc_jax.errors import DataError

    csv = tmp_path / "sgemm_product.csv"
    write_tiny_sgemm_csv(csv)
    config = sgemm.get_config("quick")
    assert config.model.widths == (deep_mlp.WIDTH,) * deep_mlp.DEPTH == (512,) * 8
    assert (config.data.name, config.data.targets, config.metrics.per_layer) == ("sgemm", "log_runs", True)
    with pytest.raises(DataError, match="data.path"):
        train.train_and_evaluate(config, str(tmp_path / "no_path"))
    config.data.update(path=str(tmp_path), train_size=40, test_size=10)  # the folder holding the csv
    config.model.widths = (16, 16)  # a small body for a fast test (the shipped one is checked above)
    config.train.update(epochs=2, eval_every=2, checkpoint_every=2, batch_size=16, progress_bar=False)
    config.mesh.num_devices = 1
    final = train.train_and_evaluate(config, str(tmp_path / "run"))["members"][0]
    assert len(final["train_mse_per_dim"]) == 4
    assert [layer["layer"] for layer in final["layers"]] == [0, 1]
    assert all(np.isfinite(layer["nrc1_variance"]) for layer in final["layers"])


def test_deep_mlp_config_arguments():
    from configs import deep_mlp

    quick = deep_mlp.get_config("hopper,quick")
    assert deep_mlp.get_config("hopper").model.widths == (512,) * 8
    assert quick.data.name == "hopper" and quick.train.epochs == 200 and quick.model.widths == (128,) * 8
    assert deep_mlp.get_config("").data.name == deep_mlp.get_config("quick").data.name == "swimmer"
    with pytest.raises(ValueError, match="configs/deep_mlp.py"):
        deep_mlp.get_config("ant")
