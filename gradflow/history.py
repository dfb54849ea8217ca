r"""Signs of exploding gradients in a training history, one detector per sign.

:func:`check_history` reads what :func:`gradflow.training.fit` records (``History.metrics``) or
any mapping of per-step arrays, and reports the signs of explosion the seed notes list, each at
the first step where it shows (a :class:`Sign`):

* ``"loss_nonfinite"`` -- the loss becomes NaN or infinite;
* ``"loss_spike"`` -- the loss exceeds a multiple of its running minimum;
* ``"weights_nonfinite"`` -- a parameter norm becomes NaN or infinite;
* ``"large_updates"`` -- an update is large relative to the weights it changes;
* ``"grad_norm_above_threshold"`` -- a layer's gradient norm stays above a threshold.

It reads numbers only (NumPy, no JAX): a history from any framework works.

References:
  R. Pascanu, T. Mikolov, Y. Bengio, "On the difficulty of training recurrent neural networks",
  ICML 2013, https://arxiv.org/abs/1211.5063 (exploding gradients: loss spikes, large updates and
  gradient norms far above their usual size).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from gradflow import _checks

__all__ = ["Sign", "check_history"]


class Sign(NamedTuple):
    """One sign of trouble found by :func:`check_history`."""

    #: "loss_nonfinite" | "weights_nonfinite" | "large_updates" | "loss_spike" |
    #: "grad_norm_above_threshold"
    kind: str
    step: int  #: first step (index into the history) where it shows
    message: str  #: human-readable explanation
    layers: tuple[int, ...] = ()  #: layers concerned (per-layer signs only)


_HISTORY_KEYS = ("loss", "param_norm", "update_norm", "grad_norm")


def _column(key: str, values: Any) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"check_history: history[{key!r}] must hold numbers (per-step floats or arrays), got "
            f"{_checks.show(values)}"
        ) from None


def _columns(history: Mapping | Sequence) -> dict[str, np.ndarray]:
    if isinstance(history, Mapping):
        cols = {k: _column(k, history[k]) for k in _HISTORY_KEYS if k in history}
    elif isinstance(history, Sequence) and not isinstance(history, (str, bytes)):
        if not history:
            raise ValueError("check_history: empty history")
        keys = [k for k in _HISTORY_KEYS if k in history[0]]
        for i, step in enumerate(history):
            missing = [k for k in keys if k not in step]
            if missing:
                raise ValueError(f"check_history: step {i} lacks {missing} (step 0 has {keys})")
        cols = {k: _column(k, [s[k] for s in history]) for k in keys}
    else:
        raise TypeError(
            "check_history: history must be a mapping of per-step arrays or a sequence of "
            f"per-step mappings, got {type(history).__name__}"
        )
    if not cols:
        raise ValueError(f"check_history: history has none of the keys {', '.join(_HISTORY_KEYS)}")
    lengths = {k: v.shape[0] if v.ndim else 0 for k, v in cols.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(
            f"check_history: every entry needs the same number of steps, got {lengths}"
        )
    return cols


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def _per_step(a: np.ndarray) -> np.ndarray:
    """``(T, ...)`` -> ``(T, n)``: one row per step (a ``(T,)`` column becomes ``(T, 1)``)."""
    return a.reshape(a.shape[0], -1)


def _check_thresholds(update_ratio: float, grad_threshold: float, window: int, spike_factor: float):
    for name, v, lo in (
        ("update_ratio", update_ratio, 0.0),
        ("grad_threshold", grad_threshold, 0.0),
        ("spike_factor", spike_factor, 1.0),
    ):
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v > lo):
            raise ValueError(f"check_history: {name} must be a finite float > {lo}, got {v!r}")
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
        raise ValueError(f"check_history: window must be an int >= 1, got {window!r}")


def _loss_nonfinite(loss: np.ndarray) -> Sign | None:
    """The first step whose loss is NaN or infinite."""
    s = _first(~np.isfinite(loss))
    if s is None:
        return None
    return Sign("loss_nonfinite", s, f"loss is {loss[s]} at step {s}")


def _loss_spike(loss: np.ndarray, spike_factor: float) -> Sign | None:
    """The first finite loss above ``spike_factor`` times the running minimum of the steps
    before it (non-finite losses do not lower the minimum)."""
    finite = np.where(np.isfinite(loss), loss, np.inf)
    running_min = np.minimum.accumulate(finite)
    prev_min = np.concatenate([[np.inf], running_min[:-1]])
    spike = np.isfinite(loss) & (prev_min > 0) & (loss > spike_factor * prev_min)
    s = _first(spike)
    if s is None:
        return None
    return Sign(
        "loss_spike",
        s,
        f"loss jumps to {loss[s]:.4g} at step {s}, more than {spike_factor:g}x its "
        f"running minimum {prev_min[s]:.4g}",
    )


def _weights_nonfinite(pn: np.ndarray) -> Sign | None:
    """The first step at which some parameter norm of ``pn`` ``(T, n)`` is not finite."""
    s = _first(~np.all(np.isfinite(pn), axis=1))
    if s is None:
        return None
    return Sign("weights_nonfinite", s, f"parameter norm is not finite at step {s}")


def _large_updates(un: np.ndarray, pn: np.ndarray, update_ratio: float) -> Sign | None:
    """The first step at which an update norm exceeds ``update_ratio`` times its parameter norm
    (``un``, ``pn``: ``(T, n)``), with the layers concerned when there are several."""
    if un.shape != pn.shape:
        raise ValueError(f"check_history: update_norm {un.shape} and param_norm {pn.shape} differ")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = un / pn
    big = np.isfinite(ratio) & (ratio > update_ratio)
    s = _first(np.any(big, axis=1))
    if s is None:
        return None
    return Sign(
        "large_updates",
        s,
        f"update norm is {np.nanmax(ratio[s]):.3g}x the parameter norm at step "
        f"{s} (threshold {update_ratio:g}); {int(big.any(1).sum())} such steps",
        tuple(int(i) for i in np.flatnonzero(big[s])) if pn.shape[1] > 1 else (),
    )


def _grad_norm_above(gn: np.ndarray, grad_threshold: float, window: int) -> Sign | None:
    """The first step that starts ``window`` consecutive steps (all steps if fewer) at which a
    layer's gradient norm of ``gn`` ``(T, L)`` is above ``grad_threshold`` (NaN counts as
    above)."""
    w = min(int(window), gn.shape[0])
    above = ~(gn <= grad_threshold)  # NaN counts as above
    # run[t, l]: above at every step of [t - w + 1, t]
    csum = np.concatenate([np.zeros((1, gn.shape[1])), np.cumsum(above, axis=0)])
    run = (csum[w:] - csum[:-w]) == w  # window ending at step t = w - 1 + index
    s = _first(np.any(run, axis=1))
    if s is None:
        return None
    layers = tuple(int(i) for i in np.flatnonzero(run[s]))
    return Sign(
        "grad_norm_above_threshold",
        s,
        f"gradient norm of layer(s) {list(layers)} stays above {grad_threshold:g} for "
        f"{w} consecutive steps from step {s}",
        layers,
    )


def check_history(
    history: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    update_ratio: float = 0.5,
    grad_threshold: float = 1.0,
    window: int = 10,
    spike_factor: float = 10.0,
) -> tuple[Sign, ...]:
    r"""Scan a training history for the signs of exploding gradients listed in the seed notes.

    ``history`` is a mapping of per-step arrays (or a sequence of per-step mappings) with any of
    the keys ``"loss"`` ``(T,)``, ``"param_norm"`` ``(T,)`` or ``(T, L)``, ``"update_norm"``
    (same shape as ``param_norm``: :math:`\|\Delta\theta_t\|`), ``"grad_norm"`` ``(T, L)``
    per-layer gradient norms (or ``(T,)``); other keys are ignored. Signs, each reported once at
    its first step:

    * ``"loss_nonfinite"`` -- the loss becomes NaN or infinite;
    * ``"weights_nonfinite"`` -- a parameter norm becomes NaN or infinite (some weight did);
    * ``"large_updates"`` -- :math:`\|\Delta\theta_t\| > ` ``update_ratio``
      :math:`\cdot \|\theta_t\|` (the weights change a lot from one update to the next);
    * ``"loss_spike"`` -- the loss exceeds ``spike_factor`` times its running minimum (unstable
      loss, large changes between updates);
    * ``"grad_norm_above_threshold"`` -- a layer's gradient norm stays above ``grad_threshold``
      (default 1, the seeds' "error gradient consistently above 1.0") for ``window`` consecutive
      steps (all steps if the history is shorter).

    Returns:
      A tuple of :class:`Sign` (empty: no sign found), ordered by step.
    """
    _check_thresholds(update_ratio, grad_threshold, window, spike_factor)
    cols = _columns(history)
    found: list[Sign | None] = []
    if "loss" in cols:
        loss = cols["loss"].reshape(-1)
        found += [_loss_nonfinite(loss), _loss_spike(loss, spike_factor)]
    if "param_norm" in cols:
        pn = _per_step(cols["param_norm"])
        found.append(_weights_nonfinite(pn))
        if "update_norm" in cols:
            found.append(_large_updates(_per_step(cols["update_norm"]), pn, update_ratio))
    if "grad_norm" in cols:
        found.append(_grad_norm_above(_per_step(cols["grad_norm"]), grad_threshold, window))
    signs = [s for s in found if s is not None]
    return tuple(sorted(signs, key=lambda sg: sg.step))
