"""Grouping sweep members into figures and legend entries, with one colour per sweep value.

A *group* is one data set in one training mode (weight decay or UFM-regularized) and becomes one
row of panels; a *sweep value* is one setting of the varied hyper-parameters (seeds pooled) and
becomes one line, coloured the same in every figure of one `plot_workdirs` call.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Sequence

import numpy as np

from nrc_jax.plotting.workdir import SEED_KEYS, Member, Workdir

SHORT_NAMES = {"weight_decay": "wd", "lambda_h": "λH", "lambda_w": "λW", "lambda_hw": "λH=λW",
               "learning_rate": "lr", "lr": "lr"}
ZERO_COLOUR = "black"
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
           "tab:olive", "tab:cyan", "tab:gray")


@dataclasses.dataclass
class SweepValue:
    """One legend entry: the varied settings (seeds pooled) and the members that share them."""

    key: tuple[tuple[str, Any], ...]
    members: list[Member]

    @property
    def label(self) -> str:
        return ", ".join(f"{SHORT_NAMES.get(k, k)}={format_value(v)}" for k, v in self.key) or "run"

    @property
    def seeds(self) -> int:
        return len(self.members)


@dataclasses.dataclass
class Group:
    """One data set in one mode: the sweep values to draw, ordered by decreasing value."""

    dataset: str
    ufm: bool
    varied: tuple[str, ...]
    values: list[SweepValue]
    workdirs: list[Workdir]
    tag: str = ""  # the workdir's folder name when runs of one data set and mode are drawn apart

    @property
    def slug(self) -> str:
        base = f"{self.dataset}_ufm" if self.ufm else self.dataset
        return f"{base}_{self.tag}" if self.tag else base

    @property
    def title(self) -> str:
        mode = "UFM-regularized" if self.ufm else "weight decay"
        dataset = f"{self.dataset} [{self.tag}]" if self.tag else self.dataset
        seeds = max(v.seeds for v in self.values)
        seed_text = f"{seeds} seed{'s' if seeds > 1 else ''}"
        if len(self.values) == 1:
            return f"{dataset} ({mode}, {self.values[0].label}, {seed_text})"
        names = ", ".join(SHORT_NAMES.get(k, k) for k in self.varied)
        return f"{dataset} ({mode}): {names} in {len(self.values)} values × {seed_text}"


def format_value(value: Any) -> str:
    """Compact sweep value: 0 -> '0', 0.01 -> '1e-2', 0.0015 -> '1.5e-3', 3 -> '3', 0.5 -> '0.5'."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value == 0:
        return "0"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e4):
        return str(int(value))
    if 0.1 <= abs(value) < 1e4:
        return f"{value:g}"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = round(value / 10 ** exponent, 6)
    if abs(mantissa) >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:g}e{exponent}"


def sort_key(value: Any) -> tuple:
    """Numbers first, in decreasing order (the paper lists sweeps from the largest value down)."""
    return (0, -float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


def varied_keys(members: Sequence[Member], ufm: bool) -> tuple[str, ...]:
    """Settings that differ between members (seeds excluded); lambda_h == lambda_w merge into lambda_hw."""
    names = sorted({k for m in members for k in m.settings if not k.startswith("_") and k not in SEED_KEYS})
    varied = [k for k in names if len({repr(m.settings.get(k)) for m in members}) > 1]
    lambdas_equal = all(m.settings.get("lambda_h") == m.settings.get("lambda_w") for m in members)
    if ufm and lambdas_equal and "lambda_h" in names:
        has_lambda = bool({"lambda_h", "lambda_w"} & set(varied))
        varied = [k for k in varied if k not in ("lambda_h", "lambda_w")]
        return ("lambda_hw", *varied) if has_lambda or not varied else tuple(varied)
    if varied:
        return tuple(varied)
    primary = ("lambda_h", "lambda_w") if ufm else ("weight_decay",)
    return tuple(k for k in primary if k in names)


def setting(member: Member, key: str) -> Any:
    return member.settings.get("lambda_h") if key == "lambda_hw" else member.settings.get(key)


def _member_identity(member: Member) -> str:
    return repr(sorted((k, v) for k, v in member.settings.items() if not k.startswith("_")))


def repeats_a_member(workdirs: Sequence[Workdir]) -> bool:
    """True when two of the workdirs hold a member with the same settings and seed: such members
    are two runs of one setting (e.g. different lengths), not seeds to average."""
    seen: set[str] = set()
    for wd in workdirs:
        identities = {_member_identity(m) for m in wd.members}
        if identities & seen:
            return True
        seen |= identities
    return False


def _group(dataset: str, ufm: bool, wds: list[Workdir], tag: str = "") -> Group:
    members = [m for wd in wds for m in wd.members]
    varied = varied_keys(members, ufm)
    values: dict[tuple, SweepValue] = {}
    for m in members:
        key = tuple((k, setting(m, k)) for k in varied)
        values.setdefault(key, SweepValue(key, [])).members.append(m)
    ordered = sorted(values.values(), key=lambda v: tuple(sort_key(x) for _, x in v.key))
    return Group(dataset, ufm, varied, ordered, wds, tag)


def build_groups(workdirs: Sequence[Workdir]) -> list[Group]:
    """Pools members of workdirs with the same data set and mode; one SweepValue per varied setting.

    Workdirs that repeat a member (same settings and seed) are drawn apart, one group per workdir
    tagged with its folder name, so the same seed is never averaged with itself."""
    by_group: dict[tuple[str, bool], list[Workdir]] = {}
    for wd in workdirs:
        by_group.setdefault((wd.dataset, wd.is_ufm), []).append(wd)
    groups = []
    for (dataset, ufm), wds in by_group.items():
        if repeats_a_member(wds):
            groups.extend(_group(dataset, ufm, [wd], wd.path.name) for wd in wds)
        else:
            groups.append(_group(dataset, ufm, wds))
    return groups


def colour_map(groups: Sequence[Group]) -> dict[str, str]:
    """Label -> colour, the same in every figure of one call: all-zero settings black, the others
    from the palette in decreasing value order, counted separately per swept knob (wd, λH=λW, ...)
    since one figure shows one knob, so the palette wraps only past 10 values of one knob."""
    by_knob: dict[tuple[str, ...], dict[str, tuple]] = {}
    for g in groups:
        for v in g.values:
            knob = tuple(k for k, _ in v.key)
            by_knob.setdefault(knob, {})[v.label] = tuple(sort_key(x) for _, x in v.key)
    colours = {}
    for labels in by_knob.values():
        i = 0
        for label, _ in sorted(labels.items(), key=lambda item: item[1]):
            if all(p.split("=")[-1] == "0" for p in label.split(", ")):
                colours[label] = ZERO_COLOUR
            else:
                colours[label] = PALETTE[i % len(PALETTE)]
                i += 1
    return colours


@dataclasses.dataclass
class Band:
    """A seed-pooled series: mean and min/max over members at the epochs all of them logged."""

    epochs: np.ndarray  # (T,)
    mean: np.ndarray    # (T,)
    low: np.ndarray     # (T,)
    high: np.ndarray    # (T,)


def pooled_series(members: Sequence[Member], metric: str) -> Band | None:
    """Mean and min-max over seeds of one metric; None when no member logged it."""
    curves = []
    for m in members:
        values = m.series(metric)
        if values is not None and np.isfinite(values).any():
            curves.append(dict(zip(m.epochs.tolist(), values.tolist())))
    if not curves:
        return None
    common = sorted(set.intersection(*(set(c) for c in curves)))
    if not common:
        return None
    stacked = np.asarray([[c[e] for e in common] for c in curves], dtype=np.float64)  # (seeds, T)
    with warnings.catch_warnings():  # all-NaN epochs (e.g. NRC3 for n = 1) stay NaN silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return Band(np.asarray(common), np.nanmean(stacked, 0), np.nanmin(stacked, 0), np.nanmax(stacked, 0))


def pooled_final(members: Sequence[Member], metric: str) -> tuple[float, float, float]:
    """(mean, min, max) over seeds of the final value of `metric`; NaNs when absent."""
    finals = np.asarray([m.final(metric) for m in members], dtype=np.float64)
    finals = finals[np.isfinite(finals)]
    if finals.size == 0:
        return math.nan, math.nan, math.nan
    return float(finals.mean()), float(finals.min()), float(finals.max())
