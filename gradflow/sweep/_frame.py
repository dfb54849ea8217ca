"""Tidy rows: one chunk's outputs -> a table of (hyperparameters, seed, metric, index, value)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from gradflow.sweep._plan import _DIVERGED_STEP, GridValue, _Plan

# ----------------------------------------------------------------------------- rows


def _divergence(outputs: Mapping[str, np.ndarray], metric_axes, n: int):
    diverged = np.zeros(n, dtype=bool)
    first_step = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    for name, names in metric_axes.items():
        arr = outputs[name]
        bad = ~np.isfinite(arr.astype(np.float64, copy=False))
        diverged |= bad.reshape(n, -1).any(axis=1)
        if "step" in names:
            p = names.index("step") + 1
            per_step = np.moveaxis(bad, p, 1).reshape(n, arr.shape[p], -1).any(axis=2)
            hit = per_step.any(axis=1)
            first_step = np.where(hit, np.minimum(first_step, per_step.argmax(axis=1)), first_step)
    step = first_step
    if _DIVERGED_STEP in outputs:
        reported = outputs[_DIVERGED_STEP].astype(np.int64).reshape(n)
        diverged |= reported >= 0
        step = np.where(reported >= 0, reported, first_step)
    mask = step == np.iinfo(np.int64).max
    return diverged, pd.arrays.IntegerArray(np.where(mask, 0, step), mask)


def _chunk_frame(plan: _Plan, g: int, runs: np.ndarray, outputs, metric_axes) -> pd.DataFrame:
    """Tidy rows of one chunk: ``outputs[name]`` has shape (len(runs), *per-run shape)."""
    n = len(runs)
    idx = plan.run_index[:, runs]
    per_run = {}
    for k in plan.grid:
        dtype = plan.dtypes[k]
        if k in plan.groups[g]:
            per_run[k] = pd.array([plan.groups[g][k]] * n, dtype=dtype)
        else:
            values = pd.array(plan.grid[k], dtype=dtype)
            per_run[k] = values.take(idx[plan.batched.index(k)])
    per_run["seed"] = np.asarray(plan.seeds, dtype=np.int64)[idx[-1]]
    diverged, diverged_step = _divergence(outputs, metric_axes, n)

    pieces, run_of = [], []
    for name in sorted(metric_axes):
        names = metric_axes[name]
        arr = outputs[name]
        shape = arr.shape[1:]
        size = math.prod(shape)
        run_of_row = np.repeat(np.arange(n), size)
        cols = {k: v.take(run_of_row) if hasattr(v, "take") else v for k, v in per_run.items()}
        cols["seed"] = per_run["seed"][run_of_row]
        cols["metric"] = pd.array([name] * (n * size), dtype="string")
        position = np.indices(shape).reshape(len(shape), size) if shape else np.zeros((0, 1))
        for col in plan.axis_columns:
            if col in names:
                v = np.tile(position[names.index(col)].astype(np.int64), n)
                cols[col] = pd.arrays.IntegerArray(v, np.zeros(n * size, dtype=bool))
            else:
                cols[col] = pd.array([pd.NA] * (n * size), dtype="Int64")
        cols["value"] = arr.reshape(n * size).astype(np.float64)
        cols["diverged"] = diverged[run_of_row]
        cols[_DIVERGED_STEP] = diverged_step.take(run_of_row)
        pieces.append(pd.DataFrame(cols, columns=list(plan.columns)))
        run_of.append(run_of_row)
    if not pieces:
        return _empty(plan.columns, plan.dtypes)
    # rows run-major (run, metric, index), so the table does not depend on the chunking
    order = np.argsort(np.concatenate(run_of), kind="stable")
    frame = pd.concat(pieces, ignore_index=True).take(order).reset_index(drop=True)
    return _coerce(frame, plan.dtypes)


def _table(plan: _Plan, parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Chunks' rows as one table, in the plan's columns and dtypes (empty without chunks)."""
    if not parts:
        return _empty(plan.columns, plan.dtypes)
    return _coerce(pd.concat(parts, ignore_index=True)[list(plan.columns)], plan.dtypes)


def _empty(columns: Sequence[str], dtypes: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=dtypes[c]) for c in columns})


def _coerce(df: pd.DataFrame, dtypes: Mapping[str, str]) -> pd.DataFrame:
    return df.astype({c: d for c, d in dtypes.items() if str(df[c].dtype) != d})


def _plain(v: object) -> GridValue:
    """A table cell as a plain Python value (``None`` for a missing one)."""
    if pd.isna(v):
        return None
    return v.item() if isinstance(v, np.generic) else v
