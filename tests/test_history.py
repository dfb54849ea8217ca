"""Tests for gradflow.history: each sign of explosion found at its first step, none in a healthy
run, per-step records accepted and bad input refused."""

from __future__ import annotations

import numpy as np
import pytest

from gradflow import history


def test_check_history_healthy_and_each_sign():
    T = 30
    healthy = {
        "loss": np.linspace(2.0, 0.5, T),
        "param_norm": np.full((T, 3), 10.0),
        "update_norm": np.full((T, 3), 0.01),
        "grad_norm": np.full((T, 3), 0.5),
        "accuracy": np.zeros(T),  # other keys are ignored
    }
    assert history.check_history(healthy) == ()
    h = dict(healthy, loss=np.r_[np.linspace(2.0, 0.5, 20), np.nan, np.full(9, np.nan)])
    (sign,) = history.check_history(h)
    assert sign.kind == "loss_nonfinite" and sign.step == 20
    pn = healthy["param_norm"].copy()
    pn[25, 1] = np.inf
    assert [s.kind for s in history.check_history(dict(healthy, param_norm=pn))] == [
        "weights_nonfinite"
    ]
    un = healthy["update_norm"].copy()
    un[7, 2] = 8.0  # 0.8 of the weight norm
    (sign,) = history.check_history(dict(healthy, update_norm=un))
    assert (sign.kind, sign.step, sign.layers) == ("large_updates", 7, (2,))
    assert history.check_history(dict(healthy, update_norm=un), update_ratio=1.0) == ()
    gn = healthy["grad_norm"].copy()
    gn[3, 0] = 5.0  # an isolated spike is not persistent
    gn[12:24, 1] = 2.0  # 12 consecutive steps above 1
    (sign,) = history.check_history(dict(healthy, grad_norm=gn))
    assert (sign.kind, sign.step, sign.layers) == ("grad_norm_above_threshold", 12, (1,))
    assert history.check_history(dict(healthy, grad_norm=gn), window=13) == ()
    loss = healthy["loss"].copy()
    loss[15] = 40.0
    (sign,) = history.check_history(dict(healthy, loss=loss))
    assert sign.kind == "loss_spike" and sign.step == 15 and "running minimum" in sign.message


def test_check_history_accepts_per_step_records_and_rejects_bad_input():
    steps = [{"loss": 1.0, "grad_norm": [2.0, 0.1]} for _ in range(10)]
    (sign,) = history.check_history(steps)
    assert sign.kind == "grad_norm_above_threshold" and sign.layers == (0,)
    with pytest.raises(ValueError, match="history has none of the keys loss, param_norm"):
        history.check_history({"acc": [1.0]})
    with pytest.raises(ValueError, match="same number of steps"):
        history.check_history({"loss": [1.0, 2.0], "grad_norm": [[1.0]]})
    with pytest.raises(ValueError, match="step 1 lacks"):
        history.check_history([{"loss": 1.0}, {"acc": 2.0}])
    with pytest.raises(TypeError, match="mapping of per-step arrays"):
        history.check_history(3.0)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        history.check_history({"loss": [1.0]}, window=0)
