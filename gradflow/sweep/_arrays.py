"""A sweep's tidy frame as dense arrays, one axis per dimension.

:func:`gradflow.sweep.load` returns one row per value (grid values, ``seed``, ``metric``, axis
columns such as ``step`` or ``layer``, ``value``); figures and tables want arrays, e.g. the
``(seeds, steps)`` curves of one metric. :func:`to_arrays` does that reshaping once for every
experiment (public as ``gradflow.sweep.to_arrays``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["to_arrays"]


def to_arrays(
    frame: pd.DataFrame, dims: Sequence[str], values: str = "value"
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The ``values`` column of ``frame`` as an array with one axis per column of ``dims``.

    Axis ``i`` runs over the sorted distinct values of ``dims[i]`` (returned as ``coords``);
    combinations missing from ``frame`` are NaN. Select the rows first (one metric, one grid
    point): every combination of ``dims`` must occur at most once.

    Args:
      frame: a tidy frame, e.g. ``df[df["metric"] == "loss"]`` of :func:`gradflow.sweep.load`.
      dims: the columns that become axes, outermost first, e.g. ``("seed", "step")``.
      values: the column holding the numbers.

    Raises:
      TypeError: ``frame`` is not a DataFrame, ``dims`` not a non-empty sequence of names, or
        ``values`` not a name.
      ValueError: a column is missing, or a combination of ``dims`` occurs more than once.

    Returns:
      ``(array, coords)``: ``array`` of float64 with shape ``(len(coords[d]) for d in dims)``,
      and ``coords``, ``{dim: sorted distinct values}``.

    Example:
      >>> import pandas as pd
      >>> df = pd.DataFrame({"seed": [1, 0, 1, 0], "step": [0, 0, 5, 5], "value": [1., 2, 3, 4]})
      >>> arr, coords = gf.sweep.to_arrays(df, ("seed", "step"))
      >>> arr
      array([[2., 4.],
             [1., 3.]])
      >>> coords["step"]
      array([0, 5])
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame (a tidy sweep table), got {frame!r}")
    if not isinstance(values, str):
        raise TypeError(f"values must be a column name (str), got {values!r}")
    if isinstance(dims, str) or not isinstance(dims, Sequence) or not dims:
        raise TypeError(f"dims must be a non-empty sequence of column names, got {dims!r}")
    dims = list(dims)
    missing = [c for c in [*dims, values] if c not in frame.columns]
    if missing:
        raise ValueError(f"to_arrays: no column(s) {missing}; columns: {list(frame.columns)}")
    if frame.duplicated(dims).any():
        raise ValueError(
            f"to_arrays: some combinations of {dims} occur more than once; select the rows "
            "first (one metric, one grid point)"
        )
    coords = {d: pd.Index(frame[d].unique()).sort_values() for d in dims}
    index = pd.MultiIndex.from_product(list(coords.values()), names=dims)
    array = frame.set_index(dims)[values].reindex(index).to_numpy(float)
    shape = tuple(len(c) for c in coords.values())
    return array.reshape(shape), {d: _plain(c) for d, c in coords.items()}


def _plain(index: pd.Index) -> np.ndarray:
    """Index values as a plain numpy array (nullable integers as int64)."""
    if pd.api.types.is_integer_dtype(index.dtype):
        return index.to_numpy(dtype=np.int64)
    return index.to_numpy()
