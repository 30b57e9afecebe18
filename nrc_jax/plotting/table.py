"""Table 1 (data set statistics) as markdown, from workdirs' summary.json `data` blocks or from loaders."""
from __future__ import annotations

import math
import pathlib
from typing import Any, Sequence

import numpy as np

from nrc_jax.plotting.workdir import DATA_BLOCK_KEYS, Workdir, config_value

COLUMNS = ("data set", "train size", "test size", "input shape", "n", "target corr. (off-diag.)",
           "λmin", "λmax")
MISSING = "–"


def data_block_from_loader(name: str) -> dict[str, Any]:
    """Table 1 fields computed by loading a data set: a registry name, or a path to an .npz file."""
    from nrc_jax.data import default_data_config, load_dataset
    from nrc_jax.data.base import table1_row

    config = default_data_config()
    if name.endswith(".npz") or "/" in name:
        config.name, config.path = "npz", name
    else:
        config.name = name
    block = normalized_block(table1_row(load_dataset(config)))
    if config.name == "npz":
        block["name"] = pathlib.Path(name).stem  # the same name a workdir trained on this file gets
    return block


def first_present(block: dict, column: str) -> Any:
    for key in DATA_BLOCK_KEYS[column]:
        if block.get(key) is not None:
            return block[key]
    return None


def normalized_block(raw: dict) -> dict[str, Any]:
    """Table 1 column -> value, whichever accepted key (DATA_BLOCK_KEYS) the source used."""
    return {column: first_present(raw, column) for column in DATA_BLOCK_KEYS}


def data_block_of_workdir(workdir: Workdir) -> dict[str, Any]:
    """summary.json's `data` block, gaps filled from config.json and the logged rows."""
    block = normalized_block(workdir.data_block)
    block["name"] = workdir.dataset
    for column in ("train_size", "test_size"):
        if block[column] is None and config_value(workdir.config, column):  # 0 in a config = "the default"
            block[column] = config_value(workdir.config, column)
    rows = [row for m in workdir.members for row in m.rows]
    if block["lambda_min"] is None:
        logged = [r["lambda_min"] for r in rows
                  if isinstance(r.get("lambda_min"), (int, float)) and math.isfinite(r["lambda_min"])]
        block["lambda_min"] = logged[-1] if logged else None
    if block["n"] is None:
        wwt = next((r["wwt"] for r in rows if isinstance(r.get("wwt"), list)), None)
        block["n"] = len(wwt) if wwt is not None else None
    if block["eigenvalues"] and block["lambda_max"] is None:
        block["lambda_max"] = max(block["eigenvalues"])
    return block


def format_number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3g}"


def format_corr(corr: Any, n: Any) -> str:
    if n == 1:
        return MISSING + " (n = 1)"
    if isinstance(corr, (int, float)) and not isinstance(corr, bool):
        return f"{corr:.3g}"
    if not isinstance(corr, list) or not corr:
        return MISSING
    matrix = np.asarray(corr, dtype=np.float64)
    if matrix.ndim == 1:  # already the off-diagonal list
        entries = matrix
    else:
        entries = matrix[np.triu_indices(matrix.shape[0], k=1)]
    text = ", ".join(f"{x:.3g}" for x in entries)
    return text if len(entries) == 1 else f"[{text}]"


def table_row(block: dict) -> list[str]:
    shape = block.get("input_shape")
    shape_text = "(" + ", ".join(str(s) for s in shape) + ")" if isinstance(shape, list) else format_number(shape)
    return [str(block.get("name") or MISSING), format_number(block.get("train_size")),
            format_number(block.get("test_size")), shape_text, format_number(block.get("n")),
            format_corr(block.get("target_corr"), block.get("n")), format_number(block.get("lambda_min")),
            format_number(block.get("lambda_max"))]


def table1_markdown(blocks: Sequence[dict]) -> str:
    """Markdown Table 1: one row per data set name; for one name, earlier blocks win, later ones fill gaps."""
    merged: dict[Any, dict] = {}
    for block in blocks:
        into = merged.setdefault(block.get("name"), {})
        for key, value in block.items():
            if into.get(key) is None:
                into[key] = value
    rows = [table_row(block) for block in merged.values()]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    footer = ("\nSizes are rows; λmin/λmax are the extreme eigenvalues of the train-target covariance Σ "
              "(target units²); target corr. lists the upper off-diagonal correlations. "
              f"'{MISSING}' = not recorded in the workdir.\n")
    return "# Table 1: data sets\n\n" + "\n".join(lines) + "\n" + footer
