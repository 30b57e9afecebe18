"""Figure builders in the paper's layout; each returns a `matplotlib.figure.Figure` (no pyplot state).

Every builder takes the groups from `groups.build_groups`, the shared label -> colour map, and a
`notes` list where it records panels or figures it had to skip (missing keys, n = 1).
"""
from __future__ import annotations

import textwrap
import warnings
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from nrc_jax.plotting.groups import (SHORT_NAMES, Group, SweepValue, format_value, pooled_final,
                                     pooled_series, setting, sort_key)
from nrc_jax.plotting.workdir import (DATA_BLOCK_KEYS, ROW_KEYS, SUMMARY_KEYS, Member, as_float_array,
                                     config_value)

PANEL_W, PANEL_H = 3.3, 3.1
LAYER_W, LAYER_H = 2.3, 1.6
BAND_ALPHA = 0.15
TRAIN_STYLE, TEST_STYLE = "-", "--"

# (panel title, y label, metrics drawn as (metric, line style), log y)
TRAINING_PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...], bool], ...] = (
    ("MSE", "MSE (target units²)", (("train_mse", TRAIN_STYLE), ("test_mse", TEST_STYLE)), True),
    ("R²", "R² (1 = perfect fit)", (("train_r2", TRAIN_STYLE), ("test_r2", TEST_STYLE)), False),
    ("NRC1: features vs top-n PCs", "NRC1 (normalized, published)", (("nrc1", TRAIN_STYLE),), True),
    ("NRC1 un-normalized", "(1/M)||H − H P_pca||²  (submission)", (("nrc1_unnormalized", TRAIN_STYLE),), True),
    ("NRC2: features vs row space of W", "NRC2 (normalized, published)", (("nrc2", TRAIN_STYLE),), True),
    ("NRC2: W vs top-n PCs", "||W − W P_pca||_F  (submission)", (("nrc2_w_pca", TRAIN_STYLE),), True),
    ("NRC3: WWᵀ vs Σ^½ − √γ I", "NRC3", (("nrc3", TRAIN_STYLE),), True),
)
NRC3_PANEL = len(TRAINING_PANELS) - 1
FINAL_PANELS: tuple[tuple[str, str, bool], ...] = (
    ("train_mse", "final train MSE (target units²)", True),
    ("test_mse", "final test MSE (target units²)", True),
    ("nrc1", "final NRC1", True),
    ("nrc2", "final NRC2", True),
    ("nrc3", "final NRC3", True),
)
# Per-layer keys in display order; other numeric keys found in `layers` follow alphabetically.
LAYER_KEYS = ("nrc1_variance", "nrc1", "stable_rank", "weight_stable_rank", "alignment", "cka", "probe_mse")
LAYER_LOG_KEYS = ("probe_mse",)
LAYER_META_KEYS = ("layer", "index", "depth", "width")  # descriptive, not heat-mapped
EVR_PCS = 5


# ---------------------------------------------------------------- axes helpers
class CompactLogFormatter(LogFormatter):
    """Labels the ticks LogFormatter would label, written like the legends: "1e-2", "0.6", "2"."""

    def __call__(self, x, pos=None):
        return format_value(float(x)) if super().__call__(x, pos) else ""


def set_epoch_axis(ax, epochs: np.ndarray) -> None:
    """Log x when the logged epochs span two decades or more (symlog if epoch 0 was logged)."""
    positive = epochs[epochs > 0]
    if positive.size and positive.max() / positive.min() >= 100:
        if (epochs <= 0).any():
            ax.set_xscale("symlog", linthresh=1.0)
        else:
            ax.set_xscale("log")
    ax.set_xlabel("epoch")


def set_log_y(ax, *arrays: np.ndarray) -> None:
    """Log y when the positive values span a decade or more (non-positive values are masked, not clipped)."""
    values = np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in arrays])
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size and positive.max() >= 10 * positive.min():
        ax.set_yscale("log", nonpositive="mask")
        ax.yaxis.set_major_formatter(CompactLogFormatter())
        ax.yaxis.set_minor_formatter(CompactLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def draw_band(ax, band, colour: str, style: str, seeds: int) -> None:
    ax.plot(band.epochs, band.mean, color=colour, linestyle=style, linewidth=1.6)
    if seeds > 1:
        ax.fill_between(band.epochs, band.low, band.high, color=colour, alpha=BAND_ALPHA, linewidth=0)


def note_on_axes(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.35",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def sweep_legend(fig: Figure, values: Sequence[SweepValue], colours: dict[str, str],
                 styles: Sequence[tuple[str, str]] = ()) -> None:
    """Figure legend on the right: one entry per sweep value, then the line styles (train/test)."""
    handles = [Line2D([], [], color=colours[v.label], linewidth=2,
                      label=v.label + (f" ({v.seeds} seeds)" if v.seeds > 1 else "")) for v in values]
    handles += [Line2D([], [], color="0.3", linestyle=style, label=name) for name, style in styles]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)


def set_title(fig: Figure, text: str, fontsize: float = 11) -> None:
    """Figure title wrapped to the figure's width (a long title is never clipped at the edges)."""
    chars_per_inch = 144.0 / fontsize  # ~0.5 em per character
    width = max(int(fig.get_figwidth() * chars_per_inch), 20)
    lines = [textwrap.fill(part, width) for part in text.split("\n")]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def new_figure(rows: int, cols: int, extra_width: float = 1.8):
    fig = Figure(figsize=(cols * PANEL_W + extra_width, rows * PANEL_H + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


# ---------------------------------------------------------------- any metrics
def metrics_figure(group: Group, names: Sequence[str], colours: dict[str, str], notes: list[str]) -> Figure | None:
    """One panel per metrics.jsonl key in `names` against epoch (log axes where the values span
    decades), a line per sweep value; None when no name was logged."""
    fig, axes = new_figure(1, len(names))
    drawn_any = False
    for ax, name in zip(axes[0], names):
        ax.set_title(name, fontsize=10)
        drawn = []
        for value in group.values:
            band = pooled_series(value.members, name)
            if band is not None and np.isfinite(band.mean).any():
                draw_band(ax, band, colours[value.label], TRAIN_STYLE, value.seeds)
                drawn.append(band)
        if not drawn:
            note_on_axes(ax, f"{name}: not logged")
            notes.append(f"{group.slug}_metrics: panel '{name}' skipped (not logged)")
            continue
        drawn_any = True
        set_epoch_axis(ax, np.concatenate([b.epochs for b in drawn]))
        set_log_y(ax, *[b.mean for b in drawn])
        ax.grid(True, which="major", alpha=0.3)
    if not drawn_any:
        return None
    set_title(fig, f"{group.title}: " + ", ".join(names), fontsize=11)
    sweep_legend(fig, group.values, colours)
    return fig


# ---------------------------------------------------------------- Figure 2
def training_figure(group: Group, colours: dict[str, str], notes: list[str]) -> Figure:
    """Figure 2 layout: one row, panels MSE, R², NRC1, NRC2, NRC3 against epoch; a line per sweep value."""
    fig, axes = new_figure(1, len(TRAINING_PANELS))
    for ax, (title, ylabel, metrics, log_y) in zip(axes[0], TRAINING_PANELS):
        ax.set_title(title, fontsize=10)
        drawn = []
        for value in group.values:
            for metric, style in metrics:
                band = pooled_series(value.members, metric)
                if band is None or not np.isfinite(band.mean).any():
                    continue
                draw_band(ax, band, colours[value.label], style, value.seeds)
                drawn.append(band)
        if not drawn:
            missing = ", ".join(m for m, _ in metrics)
            reason = "undefined for n = 1" if metrics[0][0] == "nrc3" and group_target_dim(group) == 1 else "not logged"
            note_on_axes(ax, f"{missing}: {reason}")
            notes.append(f"{group.slug}_training: panel '{title}' skipped ({missing} {reason})")
            continue
        ax.set_ylabel(ylabel)
        set_epoch_axis(ax, np.concatenate([b.epochs for b in drawn]))
        if log_y:
            set_log_y(ax, *[b.mean for b in drawn])
        if metrics[0][0] == "train_r2":
            lowest = min(np.nanmin(b.mean) for b in drawn)
            highest = max(np.nanmax(b.mean) for b in drawn)
            # R² far below 0 says little beyond "worse than the mean": clip at -1 unless nothing is above it
            low = max(lowest - 0.05, -1.0) if highest > -1.0 else lowest - 0.05 * abs(lowest)
            ax.set_ylim(low, max(1.02, highest + 0.02))
        ax.grid(True, which="major", alpha=0.3)
    if axes[0][NRC3_PANEL].get_lines():
        axes[0][NRC3_PANEL].set_title(f"{TRAINING_PANELS[NRC3_PANEL][0]}\n{nrc3_gamma_caption(group)}", fontsize=10)
    set_title(fig, f"{group.title}: training curves", fontsize=11)
    sweep_legend(fig, group.values, colours, (("train", TRAIN_STYLE), ("test", TEST_STYLE)))
    return fig


def nrc3_gamma_caption(group: Group) -> str:
    if group.ufm:
        return "(γ = λH·λW, UFM)"
    ratios = [m.summary.get(SUMMARY_KEYS["best_gamma_over_lambda_min"]) for v in group.values
              for m in v.members if m.summary]
    ratios = [r for r in ratios if isinstance(r, (int, float))]
    if ratios and max(ratios) - min(ratios) < 0.005:
        return f"(γ = final best, γ/λmin = {ratios[0]:.2f})"
    if ratios:
        return f"(γ = final best, γ/λmin ∈ [{min(ratios):.2f}, {max(ratios):.2f}])"
    return "(γ = final best)"


def group_target_dim(group: Group) -> int | None:
    """n from the data block, else from the shape of a logged WWᵀ; None when unknown."""
    for wd in group.workdirs:
        for key in DATA_BLOCK_KEYS["n"]:
            if isinstance(wd.data_block.get(key), int):
                return wd.data_block[key]
    for value in group.values:
        wwt = value.members[0].rows[-1].get("wwt")
        if isinstance(wwt, list):
            return len(wwt)
    return None


# ---------------------------------------------------------------- Figure 3
def pooled_evr(members: Sequence[Member]) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs (T,), mean EVR (T, k)) over seeds at epochs all members logged; None if absent."""
    per_member = []
    for m in members:
        table = {}
        for row in m.rows:
            evr = row.get(ROW_KEYS["evr"])
            if isinstance(evr, list) and evr:
                table[float(row[ROW_KEYS["epoch"]])] = as_float_array(evr[:EVR_PCS])
        if table:
            per_member.append(table)
    if not per_member:
        return None
    common = sorted(set.intersection(*(set(t) for t in per_member)))
    k = min(len(t[e]) for t in per_member for e in common) if common else 0
    if not common or k == 0:
        return None
    stacked = np.asarray([[t[e][:k] for e in common] for t in per_member])  # (seeds, T, k)
    return np.asarray(common), stacked.mean(0)


def evr_figure(group: Group, colours: dict[str, str], notes: list[str]) -> Figure | None:
    """Figure 3: EVR of the top 5 PCs of the last-layer features against epoch, a panel per sweep value."""
    evrs = [(v, pooled_evr(v.members)) for v in group.values]
    evrs = [(v, e) for v, e in evrs if e is not None]
    if not evrs:
        notes.append(f"{group.slug}_evr: skipped (no 'evr' in metrics.jsonl)")
        return None
    n = group_target_dim(group)
    fig, axes = new_figure(1, len(evrs), extra_width=1.4)
    pc_colours = [matplotlib.colormaps["viridis"](i / EVR_PCS) for i in range(EVR_PCS)]  # not the sweep palette
    for ax, (value, (epochs, evr)) in zip(axes[0], evrs):
        for i in range(evr.shape[1]):
            ax.plot(epochs, evr[:, i], color=pc_colours[i], linewidth=1.6)
        if n is not None and n <= evr.shape[1]:
            ax.plot(epochs, evr[:, :n].sum(1), color="black", linestyle=":", linewidth=1.4)
        ax.set_title(value.label, fontsize=10, color=colours[value.label])
        set_epoch_axis(ax, epochs)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("explained variance ratio")
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=pc_colours[i], label=f"PC{i + 1}") for i in range(EVR_PCS)]
    if n is not None:
        handles.append(Line2D([], [], color="black", linestyle=":", label=f"top n={n} total"))
    # centred, not upper: the long title spans the legend's column and would cover PC1
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    set_title(fig, f"{group.title}: EVR of the top {EVR_PCS} PCs of the last-layer features", fontsize=11)
    return fig


# ---------------------------------------------------------------- Figure 4
def member_lambda_min(member: Member, data_block: dict) -> float | None:
    for key in DATA_BLOCK_KEYS["lambda_min"]:
        if isinstance(data_block.get(key), (int, float)) and data_block[key] > 0:
            return float(data_block[key])
    logged = member.series("lambda_min")
    if logged is not None and np.isfinite(logged).any():
        return float(np.nanmean(logged))
    summary = member.summary or {}
    gamma, ratio = summary.get(SUMMARY_KEYS["best_gamma"]), summary.get(SUMMARY_KEYS["best_gamma_over_lambda_min"])
    if isinstance(gamma, (int, float)) and isinstance(ratio, (int, float)) and ratio > 0:
        return float(gamma) / float(ratio)
    return None


def gamma_curve(value: SweepValue, data_block: dict) -> tuple[np.ndarray, np.ndarray, float | None, bool] | None:
    """(x grid, seed-mean NRC3, mean best x, relative?) with x = γ/λmin when λmin is known, else γ."""
    curves, bests, relative = [], [], True
    for m in value.members:
        s = m.summary or {}
        gammas, curve = s.get(SUMMARY_KEYS["gammas"]), s.get(SUMMARY_KEYS["nrc3_curve"])
        if not isinstance(gammas, list) or not isinstance(curve, list) or len(gammas) != len(curve) or not gammas:
            continue
        lam = member_lambda_min(m, data_block)
        scale = lam if lam else 1.0
        relative &= lam is not None
        x = as_float_array(gammas) / scale
        curves.append((x, as_float_array(curve)))
        best = s.get(SUMMARY_KEYS["best_gamma_over_lambda_min"]) if lam else s.get(SUMMARY_KEYS["best_gamma"])
        if isinstance(best, (int, float)):
            bests.append(float(best))
        else:
            bests.append(float(x[np.nanargmin(curves[-1][1])]))
    if not curves:
        return None
    grid = curves[0][0]
    mean = np.mean([np.interp(grid, x, y) for x, y in curves], axis=0)
    return grid, mean, float(np.mean(bests)) if bests else None, relative


def nrc3_gamma_figure(group: Group, colours: dict[str, str], notes: list[str]) -> Figure | None:
    """Figure 4: final NRC3 against γ/λmin, a line per sweep value, the best γ marked with a star."""
    if group_target_dim(group) == 1:
        notes.append(f"{group.slug}_nrc3_gamma: skipped (NRC3 is undefined for n = 1)")
        return None
    data_block = group.workdirs[0].data_block
    curves = [(v, gamma_curve(v, data_block)) for v in group.values]
    curves = [(v, c) for v, c in curves if c is not None]
    if not curves:
        notes.append(f"{group.slug}_nrc3_gamma: skipped (no gammas/nrc3_curve in summary.json)")
        return None
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    relative = all(c[3] for _, c in curves)
    handles = []
    for value, (x, y, best, _) in curves:
        colour = colours[value.label]
        label = value.label
        ax.plot(x, y, color=colour, linewidth=1.6)
        if best is not None:
            y_best = float(np.interp(best, x, y))
            ax.scatter([best], [y_best], marker="*", s=140, color=colour, edgecolor="black", zorder=3)
            label += f": {'γ=λHλW' if group.ufm else 'best'}{', γ/λmin' if relative else ', γ'} = {best:.3g}"
        handles.append(Line2D([], [], color=colour, marker="*", markeredgecolor="black", label=label))
    set_log_y(ax, *[c[1] for _, c in curves])
    ax.set_xlabel("γ / λmin" if relative else "γ (λmin unknown)")
    ax.set_ylabel("final NRC3(γ)")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="best")
    marked = "γ used: λH·λW, not searched" if group.ufm else "best γ on the grid"
    set_title(fig, f"{group.title}:\nfinal NRC3 against γ (★ = {marked})", fontsize=10)
    return fig


# ---------------------------------------------------------------- Figures 5-9
def ufm_predicted_train_mse(group: Group, c: float) -> float | None:
    """UFM optimum training MSE sum_j min(λ_j, c') when the data block holds the target eigenvalues.

    c' = λH·λW for the UFM's loss (MSE summed over target dims); with the MSE averaged over the n
    dims too (optim.mse_reduction 'mean') the same optimum has the regularizers n times larger
    relative to the data term, so c' = n² λH·λW.
    """
    workdir = group.workdirs[0]
    for key in DATA_BLOCK_KEYS["eigenvalues"]:
        eig = workdir.data_block.get(key)
        if isinstance(eig, list) and eig:
            eig = as_float_array(eig)
            if config_value(workdir.config, "mse_reduction") == "mean":
                c = c * eig.size**2
            return float(np.minimum(eig, c).sum())
    return None


def sweep_figure(key: str, groups: Sequence[Group], colours: dict[str, str], notes: list[str]) -> Figure:
    """Figures 5-9: final MSE and NRC1-3 against the swept value, one row per data set (seed min-max bars)."""
    fig, axes = new_figure(len(groups), len(FINAL_PANELS), extra_width=1.8)
    name = SHORT_NAMES.get(key, key)
    for row, group in zip(axes, groups):
        values = group.values
        positions = np.arange(len(values))
        for ax, (metric, ylabel, log_y) in zip(row, FINAL_PANELS):
            stats = np.asarray([pooled_final(v.members, metric) for v in values])  # (values, 3)
            if not np.isfinite(stats[:, 0]).any():
                note_on_axes(ax, f"{metric}: not logged" + (" (n = 1)" if metric == "nrc3" else ""))
                notes.append(f"sweep_{key}: {group.slug} panel '{metric}' skipped (no finite values)")
                continue
            ax.plot(positions, stats[:, 0], color="0.6", linewidth=1.0, zorder=1)
            for i, v in enumerate(values):
                mean, low, high = stats[i]
                if np.isfinite(mean):
                    ax.errorbar([i], [mean], yerr=[[mean - low], [high - mean]], fmt="o", color=colours[v.label],
                                markersize=6, capsize=3, zorder=2)
            if metric == "train_mse" and group.ufm and key == "lambda_hw":
                predicted = [ufm_predicted_train_mse(group, setting(v.members[0], "lambda_h") ** 2) for v in values]
                if all(p is not None for p in predicted):
                    ax.plot(positions, predicted, color="black", linestyle=":", linewidth=1.4, zorder=1)
                    ax.text(0.02, 0.02, "dotted: UFM optimum Σ min(λj, c)", transform=ax.transAxes,
                            fontsize=7, color="0.3")
            if log_y:
                set_log_y(ax, stats[:, 0])
            if len(group.varied) > 1:  # several swept knobs: a tick names the whole setting
                ax.set_xticks(positions, [v.label for v in values], rotation=30, ha="right", fontsize=7)
            else:
                ax.set_xticks(positions, [format_value(dict(v.key).get(key, "?")) for v in values])
            ax.set_xlabel(f"{name} (swept)" if len(group.varied) == 1 else "setting")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        row[0].set_title(group.title, fontsize=9, loc="left")
    all_values = [v for g in groups for v in g.values]
    unique = sorted({v.label: v for v in all_values}.values(), key=lambda v: [sort_key(x) for _, x in v.key])
    sweep_legend(fig, unique, colours)
    set_title(fig, f"Sweep over {name}: final metrics (points: seed mean, bars: min-max); curves per value "
                 f"in <dataset>_training.png", fontsize=11)
    return fig


# ---------------------------------------------------------------- per-layer heat maps
def layer_keys(group: Group) -> list[str]:
    found: set[str] = set()
    for v in group.values:
        for m in v.members:
            for row in m.rows:
                for layer in row.get(ROW_KEYS["layers"]) or []:
                    found.update(k for k, x in layer.items() if isinstance(x, (int, float)) and not isinstance(x, bool))
    return [k for k in LAYER_KEYS if k in found] + sorted(found - set(LAYER_KEYS) - set(LAYER_META_KEYS))


def layer_tick_labels(group: Group, depth: int) -> list[str]:
    """'1', '2', ... or '1 (256)' with the layer width when the rows carry one."""
    for v in group.values:
        for row in v.members[0].rows:
            layers = row.get(ROW_KEYS["layers"])
            if isinstance(layers, list) and len(layers) >= depth:
                return [f"{i + 1} ({layers[i]['width']})" if isinstance(layers[i].get("width"), int) else str(i + 1)
                        for i in range(depth)]
    return [str(i + 1) for i in range(depth)]


def layer_matrix(members: Sequence[Member], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs (T,), seed-mean values (L, T)) of one per-layer key; None when no member logged layers."""
    tables = []
    for m in members:
        table = {}
        for row in m.rows:
            layers = row.get(ROW_KEYS["layers"])
            if isinstance(layers, list) and layers:
                table[float(row[ROW_KEYS["epoch"]])] = as_float_array([layer.get(key) for layer in layers])
        if table:
            tables.append(table)
    if not tables:
        return None
    common = sorted(set.intersection(*(set(t) for t in tables)))
    depth = min(len(t[e]) for t in tables for e in common) if common else 0
    if not common or depth == 0:
        return None
    stacked = np.asarray([[t[e][:depth] for e in common] for t in tables])  # (seeds, T, L)
    with warnings.catch_warnings():  # an all-NaN key (no weights for that layer) stays NaN quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(common), np.nanmean(stacked, 0).T


def layers_figure(group: Group, colours: dict[str, str], notes: list[str]) -> Figure | None:
    """Heat maps (layer x epoch) of every per-layer key: a row per key (shared colour scale), a column per sweep value."""
    keys = layer_keys(group)
    if not keys:
        return None
    data = {(v.label, k): layer_matrix(v.members, k) for v in group.values for k in keys}
    cols = len(group.values)
    fig = Figure(figsize=(cols * LAYER_W + 1.2, len(keys) * LAYER_H + 0.6), layout="constrained")
    axes = fig.subplots(len(keys), cols, squeeze=False)
    for row, key in enumerate(keys):
        finite = [d[1][np.isfinite(d[1])] for (label, k), d in data.items() if k == key and d is not None]
        finite = np.concatenate(finite) if finite else np.zeros(0)
        if finite.size == 0:
            notes.append(f"layers_{group.slug}: '{key}' has no finite values")
            for ax in axes[row]:
                note_on_axes(ax, f"{key}: no finite values")
            continue
        use_log = key in LAYER_LOG_KEYS and (finite > 0).all() and finite.max() > 10 * finite.min()
        norm = LogNorm(finite.min(), finite.max()) if use_log else Normalize(finite.min(), finite.max())
        image = None
        for col, value in enumerate(group.values):
            ax = axes[row, col]
            entry = data[(value.label, key)]
            if entry is None:
                note_on_axes(ax, "no per-layer rows")
                continue
            epochs, matrix = entry
            image = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap="viridis", norm=norm)
            ticks = np.unique(np.linspace(0, len(epochs) - 1, min(4, len(epochs))).round().astype(int))
            ax.set_xticks(ticks, [format_value(float(epochs[t])) for t in ticks], fontsize=7)
            ax.set_yticks(np.arange(matrix.shape[0]), layer_tick_labels(group, matrix.shape[0]), fontsize=7)
            if row == 0:
                ax.set_title(value.label, fontsize=10, color=colours[value.label])
            if row == len(keys) - 1:
                ax.set_xlabel("epoch (evaluations)", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{key}\nhidden layer (width)", fontsize=8)
        if image is not None:
            fig.colorbar(image, ax=list(axes[row]), label=key, aspect=12, pad=0.01)
    set_title(fig, f"{group.title}: per-layer metrics (layer 1 = first hidden layer)", fontsize=11)
    return fig
