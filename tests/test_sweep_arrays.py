"""Tests for gradflow.sweep.to_arrays (gradflow/sweep/_arrays.py)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gradflow as gf


def test_to_arrays_orders_axes_by_sorted_values_and_fills_gaps_with_nan():
    df = pd.DataFrame({
        "seed": pd.array([1, 0, 1], dtype="int64"),
        "step": pd.array([5, 0, 0], dtype="Int64"),
        "value": [3.0, 2.0, 1.0],
    })  # fmt: skip
    arr, coords = gf.sweep.to_arrays(df, ("seed", "step"))
    np.testing.assert_array_equal(arr, [[2.0, np.nan], [1.0, 3.0]])
    np.testing.assert_array_equal(coords["seed"], [0, 1])
    assert coords["step"].dtype == np.int64  # nullable Int64 axis columns become plain ints


@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    seed=st.integers(0, 2**16),
)
def test_to_arrays_inverts_a_tidy_frame(shape, seed):
    rng = np.random.default_rng(seed)
    cube = rng.normal(size=shape)
    idx = np.indices(shape).reshape(3, -1)
    names = [10 * np.arange(n)[::-1] for n in shape]  # descending labels: sorting matters
    df = pd.DataFrame({d: names[i][idx[i]] for i, d in enumerate("abc")})
    df["value"] = cube.ravel()
    df = df.sample(frac=1.0, random_state=seed)  # any row order
    arr, coords = gf.sweep.to_arrays(df, ("a", "b", "c"))
    np.testing.assert_array_equal(arr, cube[::-1, ::-1, ::-1])
    for i, d in enumerate("abc"):
        np.testing.assert_array_equal(coords[d], np.sort(names[i]))


def test_to_arrays_refuses_ambiguous_or_missing_columns():
    df = pd.DataFrame({"seed": [0, 0], "metric": ["a", "b"], "value": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"combinations of \['seed'\] occur more than once"):
        gf.sweep.to_arrays(df, ("seed",))
    with pytest.raises(ValueError, match=r"no column\(s\) \['step'\]; columns: "):
        gf.sweep.to_arrays(df, ("seed", "step"))
    with pytest.raises(TypeError, match="dims must be a non-empty sequence of column names"):
        gf.sweep.to_arrays(df, "seed")
    with pytest.raises(TypeError, match="frame must be a pandas DataFrame"):
        gf.sweep.to_arrays(df.to_dict("list"), ("seed",))
    with pytest.raises(TypeError, match=r"values must be a column name \(str\), got 3"):
        gf.sweep.to_arrays(df, ("seed",), values=3)
