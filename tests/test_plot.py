"""Plots from synthetic workdirs: figure structure (axes, lines), colours, seed pooling, files, errors."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from matplotlib.colors import to_hex

from fixtures_workdir import EPOCHS, write_workdir
from nrc_jax import plot
from nrc_jax.errors import DataError
from nrc_jax.io import run_files
from nrc_jax.plotting import figures, table
from nrc_jax.plotting.groups import build_groups, colour_map, format_value, pooled_series
from nrc_jax.plotting.workdir import load_workdir, load_workdirs


def groups_of(*paths):
    groups = build_groups(load_workdirs(paths))
    return groups, colour_map(groups)


def line_colours(ax) -> list[str]:
    return [to_hex(line.get_color()) for line in ax.get_lines()]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> pathlib.Path:
    """3 weight-decay values x 2 seeds, n = 2, 3 hidden layers with per-layer metrics."""
    return write_workdir(tmp_path_factory.mktemp("w") / "swimmer", values=(1e-2, 5e-4, 0.0), seeds=(0, 1), layers=3)


def test_training_figure_has_a_line_per_value_and_split(swept):
    groups, colours = groups_of(swept)
    (group,) = groups
    fig = figures.training_figure(group, colours, notes := [])
    axes = fig.axes
    assert len(axes) == 7 and notes == []
    # train+test for MSE and R², 1 each for NRC1 (published, submission), NRC2 (same), NRC3
    assert [len(ax.get_lines()) for ax in axes] == [6, 6, 3, 3, 3, 3, 3]
    assert [len(ax.collections) for ax in axes] == [6, 6, 3, 3, 3, 3, 3]  # seed min-max bands (2 seeds each)
    assert axes[0].get_yscale() == "log" and axes[2].get_yscale() == "log" and axes[1].get_yscale() == "linear"
    assert axes[0].get_xscale() == "symlog"  # epochs 0..1000 span decades and include 0
    assert "MSE" in axes[0].get_ylabel() and "²" in axes[0].get_ylabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["wd=1e-2 (2 seeds)", "wd=5e-4 (2 seeds)", "wd=0 (2 seeds)", "train", "test"]
    assert "swimmer" in fig.get_suptitle()


def test_seeds_are_averaged_with_min_max_band(swept):
    (group,), _ = groups_of(swept)
    value = group.values[0]
    rows = run_files.read_metrics(swept)
    per_seed = np.asarray([[r["nrc1"] for r in rows if r["sweep_index"] == m.sweep_index] for m in value.members])
    band = pooled_series(value.members, "nrc1")
    np.testing.assert_allclose(band.epochs, EPOCHS)
    np.testing.assert_allclose(band.mean, per_seed.mean(0))
    np.testing.assert_allclose(band.low, per_seed.min(0))
    np.testing.assert_allclose(band.high, per_seed.max(0))


def test_colours_are_one_per_value_and_the_same_across_figures(swept, tmp_path):
    other = write_workdir(tmp_path / "reacher", dataset="reacher", values=(5e-4, 0.0))
    groups, colours = groups_of(swept, other)
    assert colours["wd=0"] == "black" and len(set(colours.values())) == len(colours)
    training = {g.dataset: figures.training_figure(g, colours, []) for g in groups}
    shared = to_hex(colours["wd=5e-4"])
    assert shared in line_colours(training["swimmer"].axes[2]) and shared in line_colours(training["reacher"].axes[2])
    sweep = figures.sweep_figure("weight_decay", groups, colours, [])
    assert len(sweep.axes) == 2 * 5  # a row per data set, final train/test MSE and NRC1-3
    point_colours = {to_hex(c.get_color()) for c in sweep.axes[2].get_lines() if c.get_marker() == "o"}
    assert point_colours == {to_hex(colours[v.label]) for v in groups[0].values}


def test_evr_and_gamma_figures(swept):
    (group,), colours = groups_of(swept)
    evr = figures.evr_figure(group, colours, [])
    assert len(evr.axes) == 3
    assert all(len(ax.get_lines()) == 5 + 1 for ax in evr.axes)  # PC1..PC5 and the top-n total
    gamma = figures.nrc3_gamma_figure(group, colours, [])
    (ax,) = gamma.axes
    assert len(ax.get_lines()) == 3 and ax.get_xlabel() == "γ / λmin"
    summary = run_files.read_summary(swept)["members"]
    expected = np.mean([m["best_gamma_over_lambda_min"] for m in summary if m["sweep"]["weight_decay"] == 1e-2])
    star = ax.collections[0].get_offsets()[0]
    assert star[0] == pytest.approx(expected)


def test_single_target_skips_nrc3_with_a_note(tmp_path):
    wd = write_workdir(tmp_path / "carla1d", dataset="carla1d", sweep_key=None, values=(5e-4,), n=1)
    (group,), colours = groups_of(wd)
    assert [v.label for v in group.values] == ["wd=5e-4"]  # setting read from the config
    notes = []
    fig = figures.training_figure(group, colours, notes)
    assert len(fig.axes[6].get_lines()) == 0 and "n = 1" in fig.axes[6].texts[0].get_text()
    assert figures.nrc3_gamma_figure(group, colours, notes) is None
    assert any("n = 1" in n for n in notes) and len(notes) == 2


def test_ufm_mode_from_config_and_from_sweep_keys(tmp_path):
    wd = write_workdir(tmp_path / "ufm", ufm=True, values=(1e-2, 1e-4, 0.0))
    (group,), colours = groups_of(wd)
    assert group.ufm and group.varied == ("lambda_hw",) and group.slug == "swimmer_ufm"
    assert [v.label for v in group.values] == ["λH=λW=1e-2", "λH=λW=1e-4", "λH=λW=0"]
    config = json.loads((wd / "config.json").read_text())
    del config["optim"]["regularizer"]
    (wd / "config.json").write_text(json.dumps(config))
    assert load_workdir(wd).is_ufm
    fig = figures.sweep_figure("lambda_hw", [group], colours, [])
    dotted = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]
    eig = run_files.read_summary(wd)["data"]["eigenvalues"]
    assert len(dotted) == 1  # the UFM optimum training MSE sum_j min(lambda_j, c), c = lambda^2
    np.testing.assert_allclose(dotted[0].get_ydata(), [np.minimum(eig, v ** 2).sum() for v in (1e-2, 1e-4, 0.0)])


def test_two_swept_knobs_label_every_setting(tmp_path):
    wd = write_workdir(tmp_path / "grid", values=(1e-2, 0.0), lrs=(0.1, 0.01))
    (group,), colours = groups_of(wd)
    assert group.varied == ("lr", "weight_decay")
    assert [v.label for v in group.values] == ["lr=0.1, wd=1e-2", "lr=0.1, wd=0", "lr=1e-2, wd=1e-2", "lr=1e-2, wd=0"]
    assert colours["lr=0.1, wd=0"] != colours["lr=1e-2, wd=0"]  # only all-zero settings are black
    fig = figures.sweep_figure("lr", [group], colours, [])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [v.label for v in group.values]


def test_layer_heat_maps(swept, tmp_path):
    (group,), colours = groups_of(swept)
    fig = figures.layers_figure(group, colours, [])
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 7 * 3  # 7 per-layer keys x 3 sweep values
    assert images[0].get_array().shape == (3, len(EPOCHS))  # (layers, evaluations)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["1 (256)", "2 (256)", "3 (256)"]
    nan_rows = write_workdir(tmp_path / "nan", values=(1e-2,), sweep_key=None, layers=2)
    rows = [json.loads(line) for line in (nan_rows / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        for layer in r["layers"]:
            layer["alignment"] = float("nan")  # what the engine logs when a layer has no weights
    (nan_rows / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (group,), colours = groups_of(nan_rows)
    notes = []
    fig = figures.layers_figure(group, colours, notes)
    assert notes == ["layers_swimmer: 'alignment' has no finite values"]
    assert len([im for ax in fig.axes for im in ax.images]) == 6
    plain = write_workdir(tmp_path / "plain", values=(1e-2,))
    (group,), colours = groups_of(plain)
    assert figures.layers_figure(group, colours, []) is None


def test_missing_optional_keys_and_summary(tmp_path):
    wd = write_workdir(tmp_path / "sparse", values=(1e-2, 0.0), summary=False)
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        del r["evr"], r["nrc2"]
    (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 20')  # truncated tail
    (group,), colours = groups_of(wd)
    notes = []
    fig = figures.training_figure(group, colours, notes)
    assert len(fig.axes[4].get_lines()) == 0 and "not logged" in fig.axes[4].texts[0].get_text()
    assert figures.evr_figure(group, colours, notes) is None
    assert figures.nrc3_gamma_figure(group, colours, notes) is None
    assert len(notes) == 3


def test_plot_workdirs_names_every_output(tmp_path, monkeypatch):
    def record(fig, out_dir, stem, pdf, dpi):  # skips rendering: test_cli_renders_pngs covers it
        paths = [out_dir / f"{stem}.png"] + ([out_dir / f"{stem}.pdf"] if pdf else [])
        for p in paths:
            p.write_text(str(len(fig.axes)))
        return paths

    monkeypatch.setattr(plot, "save_figure", record)
    wd = write_workdir(tmp_path / "swimmer", values=(1e-2, 0.0), layers=2, epochs=(0, 10, 100))
    ufm = write_workdir(tmp_path / "ufm", ufm=True, values=(1e-3, 0.0), epochs=(0, 10, 100))
    one = write_workdir(tmp_path / "carla1d", dataset="carla1d", n=1, sweep_key=None, values=(0.0,))
    written = plot.plot_workdirs([wd, ufm, one], tmp_path / "out", pdf=True)
    stems = {"swimmer_training", "swimmer_evr", "swimmer_nrc3_gamma", "layers_swimmer", "swimmer_ufm_training",
             "swimmer_ufm_evr", "swimmer_ufm_nrc3_gamma", "sweep_weight_decay", "sweep_lambda_hw",
             "carla1d_training", "carla1d_evr"}
    expected = {f"{s}.{ext}" for s in stems for ext in ("png", "pdf")} | {"table1.md", "index.md"}
    assert {p.name for p in written} == expected == {p.name for p in (tmp_path / "out").iterdir()}
    index = (tmp_path / "out" / "index.md").read_text()
    assert all(f"({name})" in index for name in expected - {"index.md"})
    assert "carla1d_nrc3_gamma: skipped (NRC3 is undefined for n = 1)" in index


def test_cli_renders_pngs(tmp_path, capsys):
    wd = write_workdir(tmp_path / "swimmer", values=(1e-2, 0.0), layers=2, epochs=(0, 10, 100))
    out = tmp_path / "out"
    assert plot.main([str(wd), "--out", str(out), "--dpi", "40"]) == 0
    assert "wrote 7 files" in capsys.readouterr().out
    for name in ("swimmer_training", "swimmer_evr", "swimmer_nrc3_gamma", "layers_swimmer", "sweep_weight_decay"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 2000


def test_table1_from_summary_fallbacks_and_loader(tmp_path):
    with_block = write_workdir(tmp_path / "a", dataset="hopper", n=3, lambda_min=0.215)
    without = write_workdir(tmp_path / "b", dataset="carla1d", n=1, data_block=False, sweep_key=None, values=(0.0,))
    rng = np.random.default_rng(0)
    y = rng.standard_normal((400, 2)) @ np.array([[1.0, 0.0], [0.5, 0.2]])
    npz = tmp_path / "mine.npz"
    np.savez(npz, x_train=rng.standard_normal((400, 5)), y_train=y, x_test=np.zeros((40, 5)), y_test=np.zeros((40, 2)))
    own = write_workdir(tmp_path / "c", dataset="npz", data_block=False, sweep_key=None, values=(0.0,))
    config = json.loads((own / "config.json").read_text())
    config["data"] = {"name": "npz", "path": str(npz), "train_size": 0, "test_size": 0}  # 0 = default size
    (own / "config.json").write_text(json.dumps(config))
    blocks = [table.data_block_from_loader(str(npz))]  # the same data set as `own`, and exact: it goes first
    blocks += [table.data_block_of_workdir(w) for w in load_workdirs([with_block, without, own])]
    lines = table.table1_markdown(blocks).splitlines()
    mine, hopper, carla = (ln for ln in lines if ln.startswith("| ") and "data set" not in ln)
    assert hopper == "| hopper | 1,000 | 200 | (8) | 3 | [-0.244, -0.244, -0.244] | 0.215 | 1.5 |"
    assert carla == "| carla1d | 1,000 | 200 | – | 1 | – (n = 1) | 0.276 | – |"  # sizes from config, λmin from rows
    sigma = np.cov(y.T, bias=True)
    eig = np.linalg.eigvalsh(sigma)
    corr = sigma[0, 1] / np.sqrt(sigma[0, 0] * sigma[1, 1])
    assert mine == f"| mine | 400 | 40 | (5) | 2 | {corr:.3g} | {eig[0]:.3g} | {eig[1]:.3g} |"


@pytest.mark.parametrize("case", ["missing", "no_metrics", "empty_metrics"])
def test_cli_errors_name_the_path_and_exit_2(tmp_path, capsys, case):
    path = tmp_path / "wd"
    if case != "missing":
        path.mkdir()
    if case == "empty_metrics":
        (path / "metrics.jsonl").write_text("")
    assert plot.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err and err.startswith("error: ")
    with pytest.raises(DataError):
        plot.plot_workdirs([path], tmp_path / "out")


def test_format_value():
    assert [format_value(v) for v in (0.0, 1e-2, 1.5e-3, 5e-5, 0.5, 3, 100.0, "adam")] == \
        ["0", "1e-2", "1.5e-3", "5e-5", "0.5", "3", "100", "adam"]


def test_cli_unusable_out_folder_exits_2(tmp_path, capsys):
    wd = write_workdir(tmp_path / "swimmer", values=(1e-2,), sweep_key=None)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert plot.main([str(wd), "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and str(blocker / "out") in err and "Traceback" not in err


def test_target_correlation_forms():
    matrix = [[1.0, -0.215, -0.09], [-0.215, 1.0, 0.059], [-0.09, 0.059, 1.0]]
    assert table.format_corr(matrix, 3) == table.format_corr([-0.215, -0.09, 0.059], 3) == "[-0.215, -0.09, 0.059]"
    assert table.format_corr(-0.244, 2) == "-0.244"
    assert table.format_corr(None, 1) == "– (n = 1)" and table.format_corr(None, 2) == "–"


def test_metrics_option_plots_any_logged_key(swept, tmp_path):
    from nrc_jax import plot
    written = plot.plot_workdirs([swept], tmp_path, metrics=["nrc1_unnormalized", "nrc2_w_pca", "no_such_key"])
    assert tmp_path / "swimmer_metrics.png" in written
    index = (tmp_path / "index.md").read_text()
    assert "panel 'no_such_key' skipped (not logged)" in index


def test_workdirs_with_other_seeds_pool_into_one_band(tmp_path):
    first = write_workdir(tmp_path / "seeds01", values=(1e-2, 0.0), seeds=(0, 1))
    second = write_workdir(tmp_path / "seeds23", values=(1e-2, 0.0), seeds=(2, 3))
    (group,), _ = groups_of(first, second)
    assert group.slug == "swimmer" and [v.seeds for v in group.values] == [4, 4]


def test_workdirs_repeating_a_seed_are_drawn_apart(tmp_path):
    """Two runs of one setting and seed (e.g. two lengths) are not two seeds of one band."""
    short = write_workdir(tmp_path / "short", values=(1e-2, 0.0), seeds=(0,))
    long = write_workdir(tmp_path / "long", values=(1e-2, 5e-3, 0.0), seeds=(0,))
    groups, _ = groups_of(short, long)
    assert [g.slug for g in groups] == ["swimmer_short", "swimmer_long"]
    assert groups[0].title.startswith("swimmer [short] (weight decay)")
    assert [[v.seeds for v in g.values] for g in groups] == [[1, 1], [1, 1, 1]]
    written = plot.plot_workdirs([short, long], tmp_path / "fig")
    names = {p.name for p in written}
    assert {"swimmer_short_training.png", "swimmer_long_training.png"} <= names
