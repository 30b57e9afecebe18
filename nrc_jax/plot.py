"""Figures and Table 1 of the paper from training workdirs.

    python -m nrc_jax.plot WORKDIR [WORKDIR ...] --out DIR [--pdf] [--table-from-data NAME ...]

Writes into DIR (stable names; `<dataset>` gains a `_ufm` suffix for UFM-regularized runs):
  <dataset>_training.png   Figure 2: train/test MSE, R², NRC1-3 against epoch, a line per sweep value
  <dataset>_evr.png        Figure 3: EVR of the top 5 PCs against epoch
  <dataset>_nrc3_gamma.png Figure 4: final NRC3 against γ/λmin with the best γ marked
  <dataset>_metrics.png    with --metrics=a,b,...: those metrics.jsonl keys against epoch
                           (every NRC definition: docs/nrc.md)
  sweep_<key>.png          Figures 5-9: final MSE and NRC1-3 against the swept value
  layers_<dataset>.png     per-layer heat maps (layer x epoch), when rows carry `layers`
  table1.md, index.md      Table 1 and the list of everything written (with skipped panels)

Workdirs with the same data set and mode are pooled into one figure; seeds of one setting are
averaged (line) with a min-max band. Workdirs that repeat a member (same settings and seed, e.g. one
run at two lengths) are drawn apart, with the folder name in the file names (`<dataset>_<folder>_*`). A sweep value has one colour in every figure.
"""
from __future__ import annotations

import pathlib
import sys
from typing import Sequence

from matplotlib.figure import Figure

from nrc_jax.errors import DataError, UserError
from nrc_jax.plotting import figures, table
from nrc_jax.plotting.groups import SHORT_NAMES, build_groups, colour_map
from nrc_jax.plotting.workdir import load_workdirs

DPI = 120


def save_figure(fig: Figure, out_dir: pathlib.Path, stem: str, pdf: bool, dpi: int) -> list[pathlib.Path]:
    paths = [out_dir / f"{stem}.png"]
    fig.savefig(paths[0], dpi=dpi)
    if pdf:
        paths.append(out_dir / f"{stem}.pdf")
        fig.savefig(paths[-1])
    return paths


def index_markdown(entries: Sequence[tuple[str, str]], notes: Sequence[str], workdirs: Sequence[str]) -> str:
    lines = ["# Figures", "", "Made by `python -m nrc_jax.plot` from: " + ", ".join(f"`{w}`" for w in workdirs), ""]
    for name, what in entries:
        if name.endswith(".pdf"):
            lines[-1] = lines[-1].replace("): ", f") ([pdf]({name})): ", 1)
        else:
            lines.append(f"- [{name}]({name}): {what}")
    if notes:
        lines += ["", "## Skipped", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot_workdirs(workdirs: Sequence[str | pathlib.Path], out_dir: str | pathlib.Path, *, pdf: bool = False,
                  table_datasets: Sequence[str] = (), dpi: int = DPI,
                  metrics: Sequence[str] = ()) -> list[pathlib.Path]:
    """Writes every figure, table1.md and index.md for the given workdirs; returns the written paths.

    Raises DataError (a UserError) naming the path of a missing workdir or metrics.jsonl.
    """
    loaded = load_workdirs(workdirs)
    out = pathlib.Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the output folder {out} (--out): {err}") from None
    groups = build_groups(loaded)
    colours = colour_map(groups)
    notes: list[str] = []
    entries: list[tuple[str, str]] = []
    written: list[pathlib.Path] = []

    def emit(fig: Figure | None, stem: str, what: str) -> None:
        if fig is None:
            return
        paths = save_figure(fig, out, stem, pdf, dpi)
        written.extend(paths)
        entries.extend((p.name, what) for p in paths)

    for g in groups:
        emit(figures.training_figure(g, colours, notes), f"{g.slug}_training",
             f"{g.title}: MSE, R², NRC1-3 against epoch (Figure 2{', 6' if g.ufm else ''})")
        emit(figures.evr_figure(g, colours, notes), f"{g.slug}_evr", f"{g.dataset}: EVR of top 5 PCs (Figure 3)")
        emit(figures.nrc3_gamma_figure(g, colours, notes), f"{g.slug}_nrc3_gamma",
             f"{g.dataset}: final NRC3 against γ/λmin (Figure 4)")
        emit(figures.layers_figure(g, colours, notes), f"layers_{g.slug}", f"{g.dataset}: per-layer heat maps")
        if metrics:
            emit(figures.metrics_figure(g, metrics, colours, notes), f"{g.slug}_metrics",
                 f"{g.title}: {', '.join(metrics)} against epoch")
    for key in sorted({k for g in groups for k in g.varied}):
        swept = [g for g in groups if key in g.varied and len(g.values) > 1]
        if swept:
            emit(figures.sweep_figure(key, swept, colours, notes), f"sweep_{key}",
                 f"final metrics against {SHORT_NAMES.get(key, key)} (Figures 5-9)")

    # Loaded data first: its exact statistics win over a workdir's fallbacks for the same data set.
    blocks = [table.data_block_from_loader(name) for name in table_datasets]
    blocks += [table.data_block_of_workdir(w) for w in loaded]
    (out / "table1.md").write_text(table.table1_markdown(blocks))
    written.append(out / "table1.md")
    entries.append(("table1.md", "Table 1: data set sizes, target correlations, λmin, λmax"))
    (out / "index.md").write_text(index_markdown(entries, notes, [str(w) for w in workdirs]))
    written.append(out / "index.md")
    return written


def _define_flags(fv) -> None:
    from absl import flags

    flags.DEFINE_string("out", None, "output folder for figures, table1.md and index.md", required=True, flag_values=fv)
    flags.DEFINE_boolean("pdf", False, "also write a PDF of every figure", flag_values=fv)
    flags.DEFINE_integer("dpi", DPI, "PNG resolution", flag_values=fv)
    flags.DEFINE_string("metrics", "", "KEY,KEY: also plot these metrics.jsonl keys against epoch "
                        "(e.g. nrc1,nrc1_unnormalized_md,nrc2_w_pca)", flag_values=fv)
    flags.DEFINE_list("table-from-data", [], "NAME,NAME (or NAME NAME ...): add Table 1 rows computed by loading "
                      "these data sets (registry name or .npz path)", flag_values=fv)


def parse_args(argv: Sequence[str]):
    """The command line as a namespace: workdirs (each with metrics.jsonl), out, pdf, dpi, metrics,
    table_from_data."""
    from nrc_jax import cli

    fv, workdirs = cli.parse(argv, _define_flags, prog="python -m nrc_jax.plot", usage="WORKDIR [WORKDIR ...] --out=DIR",
                             doc=__doc__, num_args=(1, None), list_flags=("table-from-data",))
    return cli.namespace(fv, workdirs=workdirs)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        paths = plot_workdirs(args.workdirs, args.out, pdf=args.pdf, table_datasets=args.table_from_data,
                              dpi=args.dpi, metrics=[m for m in args.metrics.split(",") if m])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files to {args.out} (see {pathlib.Path(args.out) / 'index.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
