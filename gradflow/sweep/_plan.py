"""A sweep's config checked and planned: grid, seeds, static keys and axes become groups,
runs, chunks and columns."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from gradflow import config as _config
from gradflow import rng as _rng
from gradflow._io import Json

#: A value of a grid key: what ``fn`` sees for a static key, and what the table's column holds.
GridValue = int | float | str | bool | None

FORMAT = "gradflow.sweep/1"
#: Axis names of a metric's per-run array by its number of dimensions (override with ``axes=``).
DEFAULT_AXES: dict[int, tuple[str, ...]] = {0: (), 1: ("layer",), 2: ("step", "layer")}

_DEFAULT_AXIS_COLUMNS = ("step", "layer")
_RESERVED = ("seed", "metric", "value", "diverged", "diverged_step")
_DIVERGED_STEP = "diverged_step"
_KIND_DTYPES = {"bool": "boolean", "int": "Int64", "float": "float64", "str": "string"}
_MAX_SEED = 2**32
# ----------------------------------------------------------------------------- validation


def _python_value(key: str, v: object) -> GridValue:
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise TypeError(
        f"grid[{key!r}] holds {v!r} of type {type(v).__name__}; grid values must be "
        "int, float, str, bool or None (encode anything else as a string, e.g. '30x30', "
        "and decode it in fn)"
    )


def _validate_grid(grid: Mapping[str, Iterable[object]]) -> dict[str, list[GridValue]]:
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of hyperparameter -> list of values, got {grid!r}")
    out = {}
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"grid keys must be non-empty strings, got {key!r}")
        if isinstance(values, str | bytes) or not isinstance(values, Iterable | np.ndarray):
            raise TypeError(
                f"grid[{key!r}] must be a list of values, got {values!r}; "
                f"for a single value write [{values!r}]"
            )
        if isinstance(values, np.ndarray) and values.ndim != 1:
            raise TypeError(f"grid[{key!r}] must be 1-d, got an array of shape {values.shape}")
        vals = [_python_value(key, v) for v in values]
        if not vals:
            raise ValueError(f"grid[{key!r}] is empty; give at least one value")
        seen = set()
        for v in vals:
            marker = (type(v), v) if not (isinstance(v, float) and math.isnan(v)) else "nan"
            if marker in seen:
                raise ValueError(f"grid[{key!r}] has the duplicate value {v!r}: {vals}")
            seen.add(marker)
        _kind(key, vals)  # raises on mixed types
        out[key] = vals
    return out


def _kind(key: str, values: Sequence[GridValue]) -> str:
    """Column kind of one grid key: "bool", "int", "float" or "str" (None allowed in all)."""
    present = [v for v in values if v is not None]
    if not present or all(isinstance(v, str) for v in present):
        return "str"
    if all(isinstance(v, bool) for v in present):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "float"
    types = sorted({type(v).__name__ for v in values})
    raise TypeError(
        f"grid[{key!r}] mixes value types {types}: {list(values)}; use one type per key"
    )


def _is_batchable(values: Sequence[GridValue]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _validate_seeds(seeds: Iterable[int] | object) -> list[int]:
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        raise TypeError(f"seeds must be a list of integers, e.g. range({seeds}), got {seeds!r}")
    try:
        items = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be a list of integers, got {seeds!r}") from None
    out = []
    for s in items:
        if isinstance(s, bool | np.bool_) or not isinstance(s, numbers.Integral):
            raise TypeError(
                f"seeds must be integers, got {s!r} of type {type(s).__name__} in {items}"
            )
        s = int(s)
        if not 0 <= s < _MAX_SEED:
            raise ValueError(f"seeds must lie in [0, 2**32), got {s}")
        out.append(s)
    if not out:
        raise ValueError("seeds is empty; give at least one seed, e.g. range(4)")
    if len(set(out)) != len(out):
        dup = sorted({s for s in out if out.count(s) > 1})
        raise ValueError(f"seeds has duplicates {dup}; every seed must appear once")
    return out


def _validate_static(
    static: str | Sequence[str], grid: Mapping[str, Sequence[GridValue]]
) -> tuple[str, ...]:
    if isinstance(static, str):
        static = (static,)
    static = tuple(static)
    for k in static:
        if k not in grid:
            raise ValueError(f"static key {k!r} is not a grid key; valid choices: {sorted(grid)}")
    auto = tuple(k for k, v in grid.items() if not _is_batchable(v))
    return tuple(k for k in grid if k in static or k in auto)


def _validate_axes(
    axes: Mapping[str, Sequence[str]] | None, grid_keys: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    if axes is None:
        return {}
    if not isinstance(axes, Mapping):
        raise TypeError(f"axes must be a dict metric -> tuple of axis names, got {axes!r}")
    out = {}
    for metric, names in axes.items():
        if isinstance(names, str):
            raise TypeError(
                f"axes[{metric!r}] must be a tuple of axis names, got the string {names!r}; "
                f"write ({names!r},)"
            )
        names = tuple(names)
        for n in names:
            if not isinstance(n, str) or not n:
                raise TypeError(f"axes[{metric!r}] must hold non-empty strings, got {names!r}")
            if n in _RESERVED or n in grid_keys:
                raise ValueError(
                    f"axes[{metric!r}] uses the name {n!r}, which is already a column "
                    f"(reserved: {list(_RESERVED)}, grid keys: {list(grid_keys)})"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"axes[{metric!r}] repeats an axis name: {names}")
        out[str(metric)] = names
    return out


# ----------------------------------------------------------------------------- plan


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _Plan:
    """Everything derived from the config: groups, runs, chunks, columns, file names."""

    def __init__(
        self, grid, seeds, static, chunk_size, axes, name, user_config, fn, rng, precision
    ):
        self.grid = grid
        self.rng = rng
        self.matmul_precision = precision
        self.make_key = _rng.resolve(rng)
        self.seeds = seeds
        self.static = static
        self.batched = tuple(k for k in grid if k not in static)
        self.axes = axes
        self.kinds = {k: _kind(k, v) for k, v in grid.items()}
        extra = [n for names in axes.values() for n in names if n not in _DEFAULT_AXIS_COLUMNS]
        self.axis_columns = (*_DEFAULT_AXIS_COLUMNS, *dict.fromkeys(extra))
        self.columns = (
            *grid,
            "seed",
            "metric",
            *self.axis_columns,
            "value",
            "diverged",
            _DIVERGED_STEP,
        )
        self.dtypes = {
            **{k: _KIND_DTYPES[self.kinds[k]] for k in grid},
            "seed": "int64",
            "metric": "string",
            **dict.fromkeys(self.axis_columns, "Int64"),
            "value": "float64",
            "diverged": "bool",
            _DIVERGED_STEP: "Int64",
        }
        self.config = {
            "format": FORMAT,
            "name": name,
            "grid": [[k, v] for k, v in grid.items()],
            "seeds": seeds,
            "static": list(static),
            "batched": list(self.batched),
            "chunk_size": chunk_size,
            "axes": [[k, list(v)] for k, v in axes.items()],
            "config": user_config,
        }
        if rng != "threefry":  # the default is left out: stores made before the option resume
            self.config["rng"] = rng
        if precision != _config.DEFAULT:  # likewise; a store never mixes two precisions
            self.config["matmul_precision"] = precision
        self.config_hash = _hash(_canonical(self.config))
        self.fn_name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        self.grid_keys = tuple(grid)

        self.groups = [
            dict(zip(static, values)) for values in itertools.product(*(grid[k] for k in static))
        ]
        self.batched_shape = (*(len(grid[k]) for k in self.batched), len(seeds))
        self.runs_per_group = math.prod(self.batched_shape)
        self.chunk_size = min(chunk_size or self.runs_per_group, self.runs_per_group)
        self.chunks_per_group = -(-self.runs_per_group // self.chunk_size)
        # run index -> (index into each batched key's values..., index into seeds)
        self.run_index = np.indices(self.batched_shape).reshape(len(self.batched_shape), -1)

    @classmethod
    def from_config(cls, config: Mapping[str, Json], where: Path) -> _Plan:
        """The plan of a stored config (``metadata.json``'s ``"config"``), to check a store
        against what its config implies. ``where`` names the file in error messages."""
        try:
            grid = _validate_grid({str(k): v for k, v in config["grid"]})
            seeds = _validate_seeds(config["seeds"])
            static = _validate_static(config["static"], grid)
            axes = _validate_axes({str(k): v for k, v in config["axes"]}, tuple(grid))
            plan = cls(grid, seeds, static, config["chunk_size"], axes, config["name"],
                       dict(config["config"]), None, config.get("rng", "threefry"),
                       config.get("matmul_precision", _config.DEFAULT))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(
                f"{where} holds a damaged sweep config ({type(e).__name__}: {e}); restore the "
                "file or delete the store to start over"
            ) from None
        return plan

    def group_label(self, g: int) -> str:
        return ",".join(f"{k}={v}" for k, v in self.groups[g].items()) or "all"

    def chunk_file(self, g: int, c: int) -> str:
        ident = _hash(_canonical([self.config_hash, g, self.groups[g], c]))[:12]
        return f"g{g:04d}-c{c:05d}-{ident}.parquet"

    def chunk_keys(self, g: int, c: int) -> pd.DataFrame:
        """The grid-key and seed columns of chunk ``c`` of group ``g``, one row per run."""
        runs = self.chunk_runs(c)
        idx = self.run_index[:, runs]
        cols = {}
        for k in self.grid:
            if k in self.groups[g]:
                cols[k] = pd.array([self.groups[g][k]] * len(runs), dtype=self.dtypes[k])
            else:
                values = pd.array(self.grid[k], dtype=self.dtypes[k])
                cols[k] = values.take(idx[self.batched.index(k)])
        cols["seed"] = np.asarray(self.seeds, dtype=np.int64)[idx[-1]]
        return pd.DataFrame(cols)

    def chunk_runs(self, c: int) -> np.ndarray:
        start = c * self.chunk_size
        return np.arange(start, min(start + self.chunk_size, self.runs_per_group))

    def padded_size(self, n_devices: int) -> int:
        return -(-self.chunk_size // n_devices) * n_devices

    def batched_dtype(self, key: str) -> np.dtype:
        wide = np.int64 if self.kinds[key] == "int" else np.float64
        return np.dtype(jax.dtypes.canonicalize_dtype(wide))


def _checked_config(
    fn: Callable,
    grid: Mapping[str, Sequence[GridValue]],
    seeds: Iterable[int],
    static: str | Sequence[str],
    chunk_size: int | None,
    axes: Mapping[str, Sequence[str]] | None,
    name: str | None,
    config: Mapping[str, Json] | None,
) -> tuple[dict[str, list[GridValue]], list[int], tuple[str, ...], dict[str, tuple[str, ...]],
           int | None, dict[str, Json]]:  # fmt: skip
    """:func:`gradflow.sweep.run`'s sweep arguments checked and normalised: (grid, seeds,
    static, axes, chunk_size, config). Raises TypeError/ValueError naming the bad value."""
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(hparams, key), got {fn!r}")
    grid = _validate_grid(grid)
    for k in grid:
        if k in _RESERVED or k in _DEFAULT_AXIS_COLUMNS:
            raise ValueError(
                f"grid key {k!r} clashes with a table column; reserved names: "
                f"{[*_RESERVED, *_DEFAULT_AXIS_COLUMNS]}"
            )
    seeds = _validate_seeds(seeds)
    static = _validate_static(static, grid)
    axes = _validate_axes(axes, tuple(grid))
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string or None, got {name!r}")
    user_config = dict(config) if config is not None else {}
    try:
        json.loads(json.dumps(user_config, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"config must be JSON-serialisable (str, numbers, lists, dicts): {e}"
        ) from e
    return grid, seeds, static, axes, None if chunk_size is None else int(chunk_size), user_config
