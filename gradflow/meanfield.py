r"""Mean-field signal propagation: q-map, c-map, :math:`\chi_1`, depth scales, the critical line.

A wide fully connected net with :math:`N` units per layer, weights
:math:`W_{ij} \sim N(0, \sigma_w^2/N)` and biases :math:`b_i \sim N(0, \sigma_b^2)`,

.. math::

    h^1 = W^1 x + b^1, \qquad h^{l+1} = W^{l+1} \phi(h^l) + b^{l+1},

has Gaussian pre-activations in the limit :math:`N \to \infty` (Poole et al. 2016). With
``sw2`` :math:`= \sigma_w^2 = N \operatorname{Var}(W)`, ``sb2`` :math:`= \sigma_b^2 =
\operatorname{Var}(b)` and :math:`z, z_1, z_2` independent standard normals, the length of one
input and the correlation of two evolve by

.. math::

    q^{l+1} &= \sigma_w^2\, E[\phi(\sqrt{q^l} z)^2] + \sigma_b^2
      \qquad \text{(q-map, fixed point } q^*\text{)} \\
    c^{l+1} &= \frac{\sigma_w^2\, E[\phi(u_1)\phi(u_2)] + \sigma_b^2}{q^{l+1}}, \quad
      u_1 = \sqrt{q} z_1,\ u_2 = \sqrt{q}\,(c z_1 + \sqrt{1-c^2} z_2)
      \qquad \text{(c-map, fixed point } c^*\text{)}

and the stability of those fixed points sets how deep signals and gradients travel
(Schoenholz et al. 2017):

.. math::

    \chi_1 &= \sigma_w^2\, E[\phi'(\sqrt{q^*} z)^2], \qquad
    \chi_c = \sigma_w^2\, E[\phi'(u_1^*)\phi'(u_2^*)] \ (= \chi_1 \text{ when } c^* = 1), \\
    \xi_c &= -1/\log \chi_c, \qquad
    \xi_q = -1/\log\bigl(\chi_1 + \sigma_w^2\, E[\phi''(\sqrt{q^*} z)\,\phi(\sqrt{q^*} z)]\bigr), \\
    \tilde q^l &= \tilde q^{l+1}\, \sigma_w^2 E[\phi'(\sqrt{q^l} z)^2]
      \ (= \tilde q^{l+1} \chi_1 \text{ at } q^*)
      \qquad \text{(backward: } \tilde q^l = E[(\partial C/\partial h^l_i)^2]\text{)}.

:math:`\chi_1 < 1` is the ordered phase (gradients vanish like :math:`\chi_1^L`, :math:`c^* = 1`),
:math:`\chi_1 > 1` the chaotic phase (gradients explode, :math:`c^* < 1`); on the critical line
:math:`\chi_1 = 1` the depth scale :math:`\xi_c` diverges, and Schoenholz et al. find tanh nets
trainable only when the depth :math:`L \lesssim 6\xi_c`. Closed forms: tanh with
:math:`\sigma_b^2 = 0` is critical at :math:`\sigma_w^2 = 1`; ReLU has
:math:`\chi_1 = \sigma_w^2/2` and :math:`q^* = \sigma_b^2/(1 - \sigma_w^2/2)`, critical at
:math:`\sigma_w^2 = 2` (:func:`relu_q_star`, :func:`relu_chi1`, :func:`relu_c_map`).

How the Gaussian integrals are computed
---------------------------------------
A *split* rule that follows the integrand's scale. :math:`E[f(\sqrt q z)] = \int_0^\infty
[f(\sqrt q z) + f(-\sqrt q z)] \tfrac{e^{-z^2/2}}{\sqrt{2\pi}} dz`; the integrand varies on two
scales, the activation's :math:`1/\sqrt q` (:math:`\tanh(\sqrt q z)` has poles at
:math:`z = \pm i\pi/(2\sqrt q)`; :math:`\operatorname{sech}^4(\sqrt q z)`, the integrand of
:math:`\chi_1`, has width :math:`1/\sqrt q`) and the Gaussian's, 1. So :math:`[0, 1/2]` is cut
into 7 panels graded geometrically from :math:`1/(8\sqrt q)` (``order`` Gauss-Legendre nodes
each), and :math:`[1/2, \infty)` takes the Gauss rule of the weight :math:`e^{-z^2/2}` itself
(``2 order + 4`` nodes, from the rule's three-term recurrence computed once in float64 by a
discretised Stieltjes/Lanczos procedure and Golub-Welsch, as :func:`gaussian_rule`). A fixed
Gauss-Hermite rule does not resolve :math:`\operatorname{sech}^4(\sqrt q z)` once
:math:`1/\sqrt q` is below its node spacing: the previous rule (64 nodes per half-line) gave
``chi1(1e4, 0.05, "tanh") = nan`` and ``chi1(1e6, q=999202) = 0.060`` for 532.

* **Kinks.** relu, leaky_relu, elu and selu (``Activation.kinks == (0.0,)``) are smooth on each
  half-line, so splitting at 0 makes every integrand smooth on its interval and the rule converges
  spectrally (the tail rule is exact for polynomials: ReLU to rounding).
* **Accuracy** (``tests/data/meanfield_reference.json``, written by
  ``tests/make_meanfield_reference.py`` with ``scipy.integrate.quad`` and ``mpmath``): for tanh
  with :math:`\sigma_b^2 = 0.05` and :math:`\sigma_w^2` from :math:`10^{-8}` to :math:`10^6`,
  :math:`q^*` within :math:`5\times10^{-13}` and :math:`\chi_1` within :math:`5\times10^{-9}`
  relative in float64 (default ``order=10``), :math:`2\times10^{-7}` in float32.

Only kinks at 0 are supported (all registered activations); an activation with a kink elsewhere
raises ``ValueError``. The two-dimensional c-map integrals use polar coordinates
:math:`(z_1, z_2) = r(\cos\theta, \sin\theta)`, in which :math:`u_1 = \sqrt q\, r\cos\theta`
and :math:`u_2 = \sqrt q\, r \cos(\theta - \theta_0)` with :math:`\cos\theta_0 = c`: the kink
lines :math:`u_1 = 0` and :math:`u_2 = 0` are the four rays
:math:`\theta \in \{\pi/2, 3\pi/2, \theta_0 + \pi/2, \theta_0 + 3\pi/2\}`, so the angle is
split into the four arcs between them; each half arc has 5 panels graded geometrically towards
its ray from the width :math:`1/(16\sqrt q)` of the layer in which :math:`\phi` changes sign at
radius ~16 (``order_2d`` Gauss-Legendre nodes each), and the radius uses the split rule above
for the weight :math:`r e^{-r^2/2}` (``order_2d + 2`` nodes per panel). Every piece is smooth,
for kinked and saturating activations alike. Measured against the reference: the c-map gap
:math:`1 - c_{l+1}` within :math:`3\times10^{-9}` at :math:`q = 1`, :math:`3\times10^{-6}` at
:math:`q = 100` and :math:`1.4\times10^{-5}` at :math:`q = 10^4` (default ``order_2d=6``;
:func:`phase_diagram` uses 4, within :math:`10^{-4}` of ``order_2d=12`` up to
:math:`\sigma_w^2 = 10^6`).

Fixed points and transforms
---------------------------
:math:`q^*` is found by a fixed number (``num_iters``) of safeguarded Newton steps on
:math:`F(q) - q` starting from ``q0`` (a plain map step :math:`q \leftarrow F(q)` wherever Newton
would not contract or would leave :math:`q > 0`), so it is the attracting fixed point that the
network itself reaches from an input of length ``q0``. Where the iterates keep growing
(:math:`F'(q) > 1`, e.g. ReLU with :math:`\sigma_w^2 \ge 2`) there is no finite fixed point:
``q_star`` is ``inf``, and every layer sees the :math:`q \to \infty` limits, so :math:`\chi_1`
(and the slope :math:`\chi_q` of the q-map) is :math:`\sigma_w^2(\phi'(+\infty)^2 +
\phi'(-\infty)^2)/2` (ReLU: :math:`\sigma_w^2/2`, its value at every q; elu, gelu, silu,
softplus: :math:`\sigma_w^2/2`; selu: :math:`\lambda^2\sigma_w^2/2`), :math:`c^* = 1` (the
normalised c-map of an asymptotically piecewise-linear :math:`\phi` has slope 1 at
:math:`c = 1`: correlations approach 1 by a power law), :math:`\chi_c = \chi_1 \ge 1` and both
depth scales are ``inf``: never ``nan``.
:math:`c^*` uses Newton on the c-map from :math:`c = 0`, which converges monotonically because the
c-map is convex and increasing on :math:`[0, 1]` (its Mehler expansion has non-negative
coefficients); in the ordered phase :math:`c^* = 1`. The critical line is found by bisection
in :math:`\log\sigma_w^2` with a fixed number of steps. All loops are ``lax.fori_loop`` with
static trip counts, so every function is jit-compiled, vmappable and differentiable;
derivatives of :math:`q^*`, :math:`c^*` and the critical :math:`\sigma_w^2` are those of the
implicit function theorem (:math:`dq^*/d\theta = \partial_\theta F / (1 - F'(q^*))`), not
derivatives of the unrolled loop.

**Near the critical line** the depth scales :math:`\xi \approx 1/|\chi - 1|` need
:math:`\chi - 1` to the precision of the inputs' dtype: they are computed from :math:`1 - \chi`
without cancellation (``log1p``), and in float32 on the chaotic side :math:`c^*` comes from a
local model of the c-map (Price's theorem, :func:`_near_line_model`) instead of Newton, which
cannot resolve :math:`1 - c^* \sim 10^{-4}` in float32. Measured: float32 agrees with float64 to
0.3% down to :math:`|\chi_1 - 1| = 4\times10^{-5}` (the reference's :math:`\xi_c = 26643` at
:math:`10^{-4}` above the line comes out 26726; it used to be 19065). Within
:data:`_RESOLVE_ULPS` units of roundoff of the line (:math:`|\chi_1 - 1| < 2.4\times10^{-5}` in
float32, :math:`4\times10^{-14}` in float64) the distance to the line is not resolved: the depth
scale is ``inf``, :math:`c^* = \chi_c = 1`, and a ``RuntimeWarning`` says how many points (when
the inputs are concrete), never a wrong finite number.

Inputs broadcast against each other (``q_star(sw2_array, 0.05, "tanh")``); the dtype is that of
the inputs (float32 unless x64 is enabled; pass float64 under ``jax.enable_x64`` for the
accuracy above). Bad input (negative or non-finite variances, ``q <= 0``,
``|c| > 1``, an unknown activation) raises ``ValueError`` when the inputs are concrete; under
``jit``/``vmap`` tracing the value checks are skipped, because a traced value cannot raise.

Usage::

    gf.meanfield.q_star(1.5, 0.05, "tanh")           # fixed point of the q-map
    gf.meanfield.chi1(1.5, 0.05, "tanh")             # > 1: chaotic, gradients explode
    gf.meanfield.depth_scales(1.5, 0.05, "tanh")     # DepthScales(xi_q, xi_c)
    gf.meanfield.critical_sw2(jnp.linspace(0, 0.3, 4), "tanh")   # 1.0 at sb2 = 0
    pd = gf.meanfield.phase_diagram(jnp.linspace(0.5, 4, 200), jnp.linspace(0, 0.3, 200), "tanh")
    th = gf.meanfield.propagate(1.5, 0.05, "tanh", depth=20)       # q_l, c_l, gradient variance
    ms = gf.meanfield.measure_propagation(key, 1.5, 0.05, "tanh", width=1000, depth=20)

References:
  B. Poole, S. Lahiri, M. Raghu, J. Sohl-Dickstein, S. Ganguli, "Exponential expressivity in deep
  neural networks through transient chaos", NeurIPS 2016.
  S. Schoenholz, J. Gilmer, S. Ganguli, J. Sohl-Dickstein, "Deep information propagation",
  ICLR 2017.
  J. Pennington, S. Schoenholz, S. Ganguli, "Resurrecting the sigmoid in deep learning through
  dynamical isometry: theory and practice", NeurIPS 2017 (:func:`critical_point`).
  G. Golub, J. Welsch, "Calculation of Gauss quadrature rules", Math. Comp. 1969;
  W. Gautschi, *Orthogonal Polynomials: Computation and Approximation*, 2004 (the rules).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike
from numpy.polynomial import legendre

from gradflow import _checks
from gradflow import activations as _activations
from gradflow import config as _config
from gradflow import initializers as _initializers

__all__ = [
    "DEFAULT_ORDER",
    "DEFAULT_ORDER_2D",
    "DepthScales",
    "PhaseDiagram",
    "Propagation",
    "c_map",
    "c_star",
    "chi1",
    "chi_c",
    "critical_point",
    "critical_sw2",
    "depth_scales",
    "gaussian_expectation",
    "gaussian_rule",
    "measure_propagation",
    "phase_diagram",
    "propagate",
    "q_map",
    "q_star",
    "relu_c_map",
    "relu_chi1",
    "relu_q_star",
]

Array = jax.Array
ActivationLike = str | _activations.Activation

#: Gauss-Legendre nodes per panel of the one-dimensional rule (15 panels per half-line).
DEFAULT_ORDER = 10
#: Gauss-Legendre nodes per panel of the two-dimensional (polar) rule, in radius and in angle.
DEFAULT_ORDER_2D = 6

_TWO_PI = 2.0 * math.pi


# --- quadrature rules (numpy float64, computed once per order) -----------------------------------


@functools.cache
def _half_range_rule(order: int, power: int, start: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    r"""Gauss rule for :math:`\int_a^\infty g(r)\, r^{p} e^{-r^2/2}\, dr` (``power`` = p,
    ``start`` = a).

    The recurrence coefficients of the orthogonal polynomials come from the discretised Stieltjes
    procedure (Lanczos with full re-orthogonalisation) applied to a composite 24-point
    Gauss-Legendre discretisation of the weight on [a, 40] (the weight is below 1e-300 beyond);
    nodes and weights then follow from the Jacobi matrix (Golub-Welsch).
    """
    x, w = legendre.leggauss(24)
    panels, length = 300, 40.0 - start
    h = length / panels
    r = start + (np.arange(panels)[:, None] * h + (x[None, :] + 1.0) * h / 2).ravel()
    wt = np.tile(w * h / 2, panels) * r**power * np.exp(-0.5 * r * r)
    mass = wt.sum()
    basis = np.zeros((order, r.size))
    basis[0] = np.sqrt(wt / mass)
    alpha = np.zeros(order)
    beta = np.zeros(max(order - 1, 0))
    for k in range(order):
        v = r * basis[k]
        alpha[k] = basis[k] @ v
        for _ in range(2):  # full re-orthogonalisation, twice is enough
            v -= basis[: k + 1].T @ (basis[: k + 1] @ v)
        if k + 1 < order:
            beta[k] = np.linalg.norm(v)
            basis[k + 1] = v / beta[k]
    jacobi = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    nodes, vecs = np.linalg.eigh(jacobi)
    return nodes, mass * vecs[0] ** 2


#: Largest ``order`` of :func:`gaussian_rule` (its discretised Stieltjes procedure resolves no more
#: nodes; 5000 used to run for minutes).
MAX_RULE_ORDER = 256
#: Largest number of Gauss-Legendre nodes per panel of the integration rules (``order``,
#: ``order_2d``); more never improves a float64 result.
MAX_PANEL_ORDER = 64


def _check_order(name: str, order: Any, maximum: int = MAX_PANEL_ORDER) -> int:
    order = _checks.size(name, order, 2)
    if order > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {order}")
    return int(order)


def gaussian_rule(order: int = 64) -> tuple[np.ndarray, np.ndarray]:
    r"""The split (half-range) Gauss-Hermite rule: :math:`E[f(z)] \approx \sum_i w_i f(z_i)`.

    ``2 * order`` nodes, symmetric (:math:`\pm r_i`, the Gauss nodes for the weight
    :math:`e^{-r^2/2}` on :math:`[0,\infty)`), none at 0; the weights sum to 1. Exact for
    polynomials of degree :math:`< 2\,\text{order}` on each half-line separately, so for kinked
    functions with a kink at 0 as well. float64 numpy arrays, computed once per order;
    ``order <= 256`` (:data:`MAX_RULE_ORDER`). A fixed rule for :math:`E[f(z)]` with ``f`` varying
    on the scale of :math:`z`; the mean-field functions integrate :math:`f(\sqrt q z)` with the
    scale-following rule of the module docstring instead.
    """
    order = _check_order("order", order, MAX_RULE_ORDER)
    r, w = _half_range_rule(order, 0)
    w = w / math.sqrt(_TWO_PI)
    return np.concatenate([-r[::-1], r]), np.concatenate([w[::-1], w])


@functools.cache
def _legendre_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    return legendre.leggauss(n)


#: Panels of the scale-following rules on [0, _SPLIT], graded from the activation's scale.
_SCALE_PANELS = 7
#: Where the graded panels end and the Gauss rule of the Gaussian's tail takes over.
_SPLIT = 0.5
#: Panels per half arc of the angular rule, graded towards the arc's ends (the kink rays).
_ANGLE_PANELS = 5
#: Radial nodes per panel beyond order_2d: the radius also carries the activation's own scale.
_RADIAL_EXTRA = 2


def _tail_order(order: int) -> int:
    """Nodes of the tail rule on [_SPLIT, inf) for ``order`` nodes per graded panel."""
    return 2 * order + 4


def _geometric(first: Array, last: Array, count: int) -> Array:
    """``count`` points from ``first`` to ``last`` (> first > 0) in geometric progression."""
    ratio = (last / first) ** (1.0 / max(count - 1, 1))
    return first[..., None] * ratio[..., None] ** jnp.arange(count, dtype=first.dtype)


def _scale(q: Array) -> Array:
    r"""The activation's scale in z, :math:`1/\sqrt q`, clipped to [1e-30, 1]; no gradient (the
    integral does not depend on where the panels end, only its discretisation does)."""
    q = jax.lax.stop_gradient(q)
    big = q > 1.0
    return jnp.clip(jnp.where(big, jax.lax.rsqrt(jnp.where(big, q, 1.0)), 1.0), 1e-30, 1.0)


def _panel_rule(q: Array, order: int, power: int) -> tuple[Array, Array]:
    r"""Nodes ``z > 0`` and weights ``(*q.shape, n)`` of the scale-following rule for
    :math:`\int_0^\infty g(z)\, z^p e^{-z^2/2} dz` (``power`` = p): on :math:`[0, 1/2]`,
    :data:`_SCALE_PANELS` panels graded geometrically from the activation's scale
    :math:`1/(8\sqrt q)` (``order`` Gauss-Legendre nodes each); on :math:`[1/2, \infty)` the
    Gauss rule of the weight itself (:func:`_half_range_rule`, exact for polynomials). The
    weights of ``g = 1`` sum to 1/2 for p = 0 (half a standard normal) and to 1 for p = 1."""
    dtype = q.dtype
    first = _scale(q) / 8
    ends = jnp.concatenate(
        [
            jnp.zeros((*q.shape, 1), dtype),
            _geometric(first, jnp.full_like(first, _SPLIT), _SCALE_PANELS),
        ],
        axis=-1,
    )
    x, w = _legendre_rule(order)
    x, w = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    lo, half = ends[..., :-1], 0.5 * (ends[..., 1:] - ends[..., :-1])
    z = (lo[..., None] + (x + 1.0) * half[..., None]).reshape(*q.shape, -1)
    wz = (w * half[..., None]).reshape(*q.shape, -1) * jnp.exp(-0.5 * z * z) * z**power
    tz, tw = _half_range_rule(_tail_order(order), power, _SPLIT)
    tz = jnp.broadcast_to(jnp.asarray(tz, dtype), (*q.shape, tz.size))
    tw = jnp.broadcast_to(jnp.asarray(tw, dtype), tz.shape)
    z, wz = jnp.concatenate([z, tz], axis=-1), jnp.concatenate([wz, tw], axis=-1)
    return (z, wz) if power else (z, wz / math.sqrt(_TWO_PI))


def _safe_sqrt(q: Array) -> Array:
    # sqrt(q) with a finite (zero) derivative at q = 0, where the q-derivative of a Gaussian
    # expectation is a 0 * inf limit that autodiff cannot take. At q = 0 the scale is 1e-30, not
    # 0, so that a kinked integrand takes its one-sided limits (f(0+) + f(0-)) / 2, the q -> 0+
    # limit of E[f(sqrt(q) z)], instead of the value at the kink.
    pos = q > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, q, 1.0)), 1e-30)


def _expect(q: Array, order: int, *fs: Callable[[Array], Array]) -> list[Array]:
    """E[f(sqrt(q) z)] for each f, broadcasting over q (the rule on a new trailing axis): the
    scale-following split rule (module docstring), f(u) + f(-u) on the half-line."""
    z, w = _panel_rule(q, order, 0)
    u = _safe_sqrt(q)[..., None] * z
    return [jnp.sum(w * (f(u) + f(-u)), axis=-1) for f in fs]


def _angle(c: Array) -> Array:
    """theta_0 = arccos(c), the angle between the two inputs."""
    return jnp.arccos(jnp.clip(c, -1.0, 1.0))


def _angle_from_gap(d: Array) -> Array:
    """theta_0 from d = 1 - c, accurate for small d: arccos(1 - d) = 2 arcsin(sqrt(d / 2))."""
    return 2.0 * jnp.arcsin(jnp.sqrt(jnp.clip(d, 0.0, 2.0) / 2.0))


def _expect_2d(q: Array, t0: Array, order_2d: int, *fns: Callable) -> list[Array]:
    """E[f(u1, u2)] for each f, inputs at angle t0 = arccos(c): polar rule split at the four
    kink rays u1 = 0 and u2 = 0, graded towards them in angle and towards 0 in radius."""
    dtype = q.dtype
    r, wr = _panel_rule(q, order_2d + _RADIAL_EXTRA, 1)  # (..., n_r); weights sum to 1
    half_pi = jnp.asarray(0.5 * math.pi, dtype)
    rays = jnp.stack(
        jnp.broadcast_arrays(
            half_pi, 3 * half_pi, t0 + half_pi, jnp.mod(t0 + 3 * half_pi, _TWO_PI)
        ),
        axis=-1,
    )
    start = jnp.sort(rays, axis=-1)
    end = jnp.concatenate([start[..., 1:], start[..., :1] + _TWO_PI], axis=-1)  # (..., 4)
    # Each arc is split at its middle; each half is graded geometrically towards its ray, from
    # the angular width s/16 of the layer in which phi changes sign at radius ~16 (s = 1/sqrt q).
    halflen = jnp.maximum(0.5 * (end - start), 1e-30)
    first = jnp.minimum(_scale(q)[..., None] / 16, halflen / _ANGLE_PANELS)
    dist = jnp.concatenate(
        [jnp.zeros((*halflen.shape, 1), dtype), _geometric(first, halflen, _ANGLE_PANELS)],
        axis=-1,
    )  # (..., 4, P + 1): distances from the ray
    x, w = _legendre_rule(order_2d)
    x, w = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    lo, half = dist[..., :-1], 0.5 * (dist[..., 1:] - dist[..., :-1])
    t = (lo[..., None] + (x + 1.0) * half[..., None]).reshape(*halflen.shape, -1)  # (..., 4, m)
    wt = (w * half[..., None]).reshape(*halflen.shape, -1)
    theta = jnp.concatenate([start[..., None] + t, end[..., None] - t], axis=-1)  # (..., 4, 2m)
    w_theta = jnp.concatenate([wt, wt], axis=-1) / _TWO_PI
    scale = _safe_sqrt(q)[..., None, None, None]
    u1 = scale * jnp.cos(theta)[..., None] * r[..., None, None, :]  # (..., 4, 2m, n_r)
    u2 = scale * jnp.cos(theta - t0[..., None, None])[..., None] * r[..., None, None, :]
    weight = w_theta[..., None] * wr[..., None, None, :]
    return [jnp.sum(weight * f(u1, u2), axis=(-3, -2, -1)) for f in fns]


def gaussian_expectation(
    f: Callable[[Array], Array], q: ArrayLike = 1.0, *, order: int = DEFAULT_ORDER
) -> Array:
    r""":math:`E_{z \sim N(0,1)}[f(\sqrt{q}\, z)]` by the scale-following split rule.

    Args:
      f: elementwise function, smooth on each half-line (a kink at 0 is fine).
      q: variance :math:`q \ge 0`, any shape; the result has its shape.
      order: Gauss-Legendre nodes per panel of the split rule (module docstring).
    """
    _checks.function("f", f)
    order = _check_order("order", order)
    _checks.nonneg("q", q, "a variance")
    q = _as_float(q)
    return _expect(q, order, f)[0]


# --- input handling ------------------------------------------------------------------------------


def _resolve(activation: ActivationLike) -> _activations.StaticActivation:
    act = _activations.get(activation)  # ValueError/TypeError naming the valid names
    if any(k != 0.0 for k in act.kinks):
        raise ValueError(
            f"gradflow.meanfield splits its Gaussian integrals at 0 only; activation "
            f"{act.name!r} has kinks at {act.kinks}"
        )
    return _activations.StaticActivation(act)


def _as_float(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _variances(sw2: ArrayLike, sb2: ArrayLike, *more: ArrayLike) -> tuple[Array, ...]:
    _checks.nonneg("sw2", sw2, "sigma_w^2 = N Var(W)")
    _checks.nonneg("sb2", sb2, "sigma_b^2 = Var(b)")
    arrays = [_as_float(a) for a in (sw2, sb2, *more)]
    dtype = jnp.result_type(*arrays)
    return tuple(jnp.broadcast_arrays(*(a.astype(dtype) for a in arrays)))


# --- the maps ------------------------------------------------------------------------------------


@functools.cache
def _kink_delta(static: _activations.StaticActivation) -> float:
    """(phi'(0+) - phi'(0-)) phi(0): the weight of the delta in E[phi'' phi] at a kink at 0."""
    act = static.act
    if not act.kinks:
        return 0.0
    tiny = np.float32(1e-30)
    with jax.ensure_compile_time_eval():  # called while tracing: evaluate eagerly
        jump = float(act.grad(tiny)) - float(act.grad(-tiny))
        return jump * float(act.fn(np.float32(0.0)))


def _q_map_and_slope(
    q: Array, sw2: Array, sb2: Array, static: _activations.StaticActivation, order: int
):
    r"""F(q) = sw2 E[phi^2] + sb2 and F'(q) = sw2 E[phi'^2 + phi phi''] (+ kink delta)."""
    act = static.act
    e_phi2, e_dphi2, e_phi_d2 = _expect(
        q,
        order,
        lambda u: act.fn(u) ** 2,
        lambda u: act.grad(u) ** 2,
        lambda u: act.fn(u) * act.grad2(u),
    )
    slope = e_dphi2 + e_phi_d2
    delta = _kink_delta(static)
    if delta:
        pos = q > 0
        slope = slope + jnp.where(
            pos, delta / jnp.sqrt(_TWO_PI * jnp.where(pos, q, 1.0)), jnp.sign(delta) * jnp.inf
        )
    return sw2 * e_phi2 + sb2, sw2 * slope, sw2 * e_dphi2


def _tolerance(dtype) -> float:
    return float(np.sqrt(np.finfo(dtype).eps))


def _q_star_core(sw2, sb2, q0, static, order, num_iters):
    """Returns (q*, chi1, chi_q) with implicit-function derivatives for q*."""

    sw2_, sb2_ = jax.lax.stop_gradient(sw2), jax.lax.stop_gradient(sb2)

    def step(_, q):
        f, slope, _ = _q_map_and_slope(q, sw2_, sb2_, static, order)
        d = slope - 1.0
        contracting = d < 0
        newton = q - (f - q) / jnp.where(contracting, d, -1.0)
        # Newton below 0 happens only when F is convex and its attracting fixed point is 0.
        q_new = jnp.where(contracting & jnp.isfinite(newton), jnp.maximum(newton, 0.0), f)
        return jnp.where(jnp.isfinite(q_new), q_new, q)

    q = jax.lax.fori_loop(0, num_iters, step, jax.lax.stop_gradient(q0))
    f, slope, _ = _q_map_and_slope(q, sw2, sb2, static, order)
    f_, slope_ = jax.lax.stop_gradient(f), jax.lax.stop_gradient(slope)
    tol = _tolerance(q.dtype)
    # (A length below 1e-30 counts as 0: the rule evaluates q = 0 at the scale 1e-30.)
    big = jnp.maximum(q, f_)
    converged = ((jnp.abs(f_ - q) <= tol * big) | (big <= 1e-30)) & (slope_ <= 1.0 + tol)
    # Implicit function theorem: dq*/dtheta = dF/dtheta / (1 - F'(q*)); the value stays q.
    denom = 1.0 - slope_
    q_impl = q + (f - f_) / jnp.where(denom > 0, denom, jnp.inf)
    # chi1 and chi_q at q*, with q* carrying its derivative.
    _, slope_star, chi = _q_map_and_slope(q_impl, sw2, sb2, static, order)
    nan = jnp.asarray(jnp.nan, q.dtype)
    unbounded = ~converged & (f_ > q)
    q_out = jnp.where(converged, q_impl, jnp.where(unbounded, jnp.inf, nan))
    # q* = inf: the lengths grow without bound and every layer sees the q -> inf limits,
    # chi1 = chi_q = sw2 (phi'(+inf)^2 + phi'(-inf)^2) / 2 (ReLU: sw2 / 2, as at any q).
    limit = sw2 * _asymptotic_grad2(static, q.dtype)
    chi_out = jnp.where(converged, chi, jnp.where(unbounded, limit, nan))
    return q_out, chi_out, jnp.where(converged, slope_star, jnp.where(unbounded, limit, nan))


def _asymptotic_grad2(static: _activations.StaticActivation, dtype) -> Array:
    """(phi'(+inf)^2 + phi'(-inf)^2) / 2, the limit of E[phi'(sqrt(q) z)^2] as q -> inf, with
    phi' evaluated at +-1e4 (every registered unbounded activation is linear there to rounding)."""
    u = jnp.asarray([1e4, -1e4], dtype)
    return jnp.mean(static.act.grad(u) ** 2)


def _c_norm(q, sw2, sb2, static, order_2d):
    """q^{l+1} by the same 2-D rule as the c-map at c = 1 (see _c_map_core)."""
    act = static.act
    (e_pp,) = _expect_2d(q, jnp.zeros_like(q), order_2d, lambda u1, u2: act.fn(u1) ** 2)
    return sw2 * e_pp + sb2


def _c_map_core(t0, q, sw2, sb2, static, order_2d, norm=None):
    """(1 - c_{l+1}, chi_c(c) = d c_{l+1} / d c) for two inputs of length q at angle t0.

    1 - c_{l+1} = sw2 E[(phi(u1) - phi(u2))^2] / 2 / q_{l+1}: free of the cancellation in
    1 - (sw2 E[phi(u1) phi(u2)] + sb2) / q_{l+1}, so c* close to 1 (near the critical line) is
    resolved in float32; q_{l+1} is integrated by the same rule at c = 1, so c = 1 is exactly a
    fixed point of the discretised map.
    """
    act = static.act
    e_gap, e_dd = _expect_2d(
        q,
        t0,
        order_2d,
        lambda u1, u2: (act.fn(u1) - act.fn(u2)) ** 2,
        lambda u1, u2: act.grad(u1) * act.grad(u2),
    )
    if norm is None:
        norm = _c_norm(q, sw2, sb2, static, order_2d)
    return 0.5 * sw2 * e_gap / norm, sw2 * e_dd * q / norm


#: Within this many units of roundoff (times max(chi1, 1)) of the critical line chi1 = 1, the
#: distance to the line is below what the dtype resolves to 1%: xi = inf with a warning.
_RESOLVE_ULPS = 200
# float32 near the line, chaotic side: the local model of D below (gaps t1 < t2).
_MODEL_GAPS = (1e-4, 1e-3)
_MODEL_MAX_GAP = 3e-3


def _near_line_model(q, sw2, chi1_, static, order_2d):
    r"""c* and :math:`1 - \chi_c` on the chaotic side near the critical line, free of the
    cancellation that defeats Newton on the c-map in float32.

    At :math:`q = q^*` Price's theorem gives :math:`1 - c_{l+1} = \int_c^1 \chi_c(c')\,dc'`,
    :math:`\chi_c(c') = \chi_1 - D(c')` with :math:`D(c') = \frac{\sigma_w^2}{2}
    E[(\phi'(u_1) - \phi'(u_2))^2] \ge 0` (a difference of derivatives: no cancellation). The
    fixed point solves :math:`\chi_1 - 1 = \frac1d \int_0^d D(1 - t)\,dt`. Near the line
    :math:`d^*` is small and :math:`D(1 - t) \approx A t^\alpha` (:math:`\alpha = 1` for smooth
    :math:`\phi`, 1/2 where :math:`\phi'` jumps), fitted at the two gaps :data:`_MODEL_GAPS`;
    then :math:`d^* = ((\alpha + 1)(\chi_1 - 1)/A)^{1/\alpha}` and
    :math:`1 - \chi_c = \alpha (\chi_1 - 1)`, to relative :math:`O(d^*)`."""
    dtype = q.dtype
    t = jnp.asarray(_MODEL_GAPS, dtype)
    qb = jnp.broadcast_to(q[..., None], (*q.shape, 2))
    tb = jnp.broadcast_to(_angle_from_gap(t), qb.shape)
    act = static.act
    (e,) = _expect_2d(qb, tb, order_2d, lambda u1, u2: (act.grad(u1) - act.grad(u2)) ** 2)
    d_t = 0.5 * sw2[..., None] * e  # D(1 - t) at the two gaps
    ok = jnp.all(d_t > 0, axis=-1)
    d1, d2 = jnp.where(ok, d_t[..., 0], 1.0), jnp.where(ok, d_t[..., 1], 10.0)
    alpha = jnp.log(d2 / d1) / math.log(_MODEL_GAPS[1] / _MODEL_GAPS[0])
    amp = d1 / jnp.asarray(_MODEL_GAPS[0], dtype) ** alpha
    excess = jnp.maximum(chi1_ - 1.0, 0.0)
    gap = ((alpha + 1.0) * excess / amp) ** (1.0 / alpha)
    return jnp.where(ok, gap, jnp.inf), alpha * excess


def _c_star_core(q_s, chi1_, sw2, sb2, static, order_2d, num_iters):
    """(c*, chi_c, 1 - chi_c, unresolved): c* by Newton from c = 0 (monotone: the c-map is convex
    and increasing on [0, 1]), iterating on the gap d = 1 - c; in float32 near the line on the
    chaotic side, :func:`_near_line_model`. Where q* = inf, c* = 1 (module docstring); within
    roundoff of the line (:data:`_RESOLVE_ULPS`), c* = chi_c = 1 and ``unresolved``."""
    infinite = q_s == jnp.inf
    finite = jnp.isfinite(q_s) & (q_s > 0)
    q = jnp.where(finite, q_s, 1.0)
    q_, sw2_, sb2_ = (jax.lax.stop_gradient(a) for a in (q, sw2, sb2))
    norm_ = _c_norm(q_, sw2_, sb2_, static, order_2d)

    def step(_, d):
        # G(c) = f(c) - c = d - gap(d); dG/dc = chi_c - 1.
        gap, slope = _c_map_core(_angle_from_gap(d), q_, sw2_, sb2_, static, order_2d, norm_)
        g = d - gap
        contracting = slope < 1.0
        newton = d - g / jnp.where(contracting, 1.0 - slope, 1.0)
        d_new = jnp.where(contracting & jnp.isfinite(newton), newton, gap)
        return jnp.clip(d_new, 0.0, 2.0)

    d = jax.lax.fori_loop(0, num_iters, step, jnp.ones_like(q_))
    norm = _c_norm(q, sw2, sb2, static, order_2d)
    gap, slope = _c_map_core(_angle_from_gap(d), q, sw2, sb2, static, order_2d, norm)
    gap_, slope_ = jax.lax.stop_gradient(gap), jax.lax.stop_gradient(slope)
    denom = 1.0 - slope_
    # implicit derivative of c* = 1 - d* (the value stays 1 - d)
    d_impl = d + (gap - gap_) / jnp.where(denom > 0, denom, jnp.inf)
    ordered = chi1_ <= 1.0
    ok = finite & ~ordered & (d > 0)
    chi_c_val = _c_map_core(
        _angle_from_gap(jnp.where(ok, d_impl, 1.0)), q, sw2, sb2, static, order_2d, norm
    )[1]
    nan = jnp.asarray(jnp.nan, q.dtype)
    # q* = inf: correlations approach 1 (by a power law: chi_c = chi1 >= 1 there, xi_c = inf).
    c_out = jnp.where(ordered | infinite, 1.0, jnp.where(finite, 1.0 - d_impl, nan))
    # A stable c* has chi_c < 1; within quadrature/rounding resolution of the critical line
    # it may come out >= 1: report the line (xi_c = inf).
    chi_c_out = jnp.where(
        ordered | infinite, chi1_, jnp.where(finite, jnp.minimum(chi_c_val, 1.0), nan)
    )
    # 1 - chi_c without the cancellation of 1 - chi_c near 1 (ordered: 1 - chi1 is exact)
    omc = jnp.where(ordered | infinite, 1.0 - chi1_, 1.0 - chi_c_out)
    if jnp.finfo(q.dtype).bits <= 32:
        gap_m, omc_m = _near_line_model(q, sw2, chi1_, static, order_2d)
        use = finite & ~ordered & (gap_m < _MODEL_MAX_GAP)
        c_out = jnp.where(use, 1.0 - gap_m, c_out)
        omc = jnp.where(use, omc_m, omc)
        chi_c_out = jnp.where(use, 1.0 - omc_m, chi_c_out)
    tol = _RESOLVE_ULPS * float(jnp.finfo(q.dtype).eps) * jnp.maximum(chi1_, 1.0)
    unresolved = finite & (jnp.abs(chi1_ - 1.0) < tol)
    exactly = chi1_ == 1.0  # on the line (e.g. tanh at (1, 0)): inf is the exact answer
    one = jnp.ones_like(c_out)
    c_out = jnp.where(unresolved, one, c_out)
    chi_c_out = jnp.where(unresolved, one, chi_c_out)
    omc = jnp.where(unresolved, jnp.zeros_like(omc), omc)
    return c_out, chi_c_out, omc, unresolved & ~exactly


def _xi(one_minus_chi: Array) -> Array:
    """xi = -1 / log(chi) from 1 - chi (accurate near chi = 1): inf at chi >= 1, 0 at chi = 0."""
    x = one_minus_chi
    safe = jnp.where((x > 0) & (x < 1), x, 0.5)
    return jnp.where(x <= 0, jnp.inf, jnp.where(x < 1, -1.0 / jnp.log1p(-safe), 0.0))


# --- jitted cores (activation and orders static) -------------------------------------------------


@functools.partial(jax.jit, static_argnums=(3, 4))
def _q_map_jit(q, sw2, sb2, static, order):
    return _q_map_and_slope(q, sw2, sb2, static, order)[0]


@functools.partial(jax.jit, static_argnums=(4, 5))
def _c_map_jit(c, q, sw2, sb2, static, order_2d):
    gap, slope = _c_map_core(_angle(c), q, sw2, sb2, static, order_2d)
    return 1.0 - gap, slope


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _q_sequence_jit(q1, sw2, sb2, static, order, depth):
    def layer(q, _):
        return _q_map_and_slope(q, sw2, sb2, static, order)[0], q

    return jax.lax.scan(layer, q1, None, length=depth)[1]


def _q_sequence(
    q1: ArrayLike,
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    depth: int,
    order: int,
) -> Array:
    """q^1 = ``q1``, q^{l+1} = :func:`q_map` (q^l): the ``depth`` lengths, one compiled scan."""
    static = _resolve(activation)
    order = _check_order("order", order)
    depth = _checks.size("depth", depth)
    _checks.positive("q", q1, "a pre-activation variance")
    sw2, sb2, q1 = _variances(sw2, sb2, q1)
    return _q_sequence_jit(q1, sw2, sb2, static, order, depth)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _q_star_jit(sw2, sb2, q0, static, order, num_iters):
    return _q_star_core(sw2, sb2, q0, static, order, num_iters)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _chi1_at_q_jit(q, sw2, static, order):
    (e_dphi2,) = _expect(q, order, lambda u: static.act.grad(u) ** 2)
    return sw2 * e_dphi2


def _summary(sw2, sb2, q0, static, order, order_2d, num_iters, num_iters_c):
    q_s, chi1_, chi_q = _q_star_core(sw2, sb2, q0, static, order, num_iters)
    c_s, chi_c_, omc, unresolved = _c_star_core(q_s, chi1_, sw2, sb2, static, order_2d, num_iters_c)
    tol = _RESOLVE_ULPS * float(jnp.finfo(chi_q.dtype).eps) * jnp.maximum(chi_q, 1.0)
    unresolved_q = jnp.abs(chi_q - 1.0) < tol
    omq = jnp.where(unresolved_q, 0.0, 1.0 - chi_q)
    unresolved_q = unresolved_q & (chi_q != 1.0)  # exactly on the line: inf is exact, no warning
    return {
        "q_star": q_s,
        "c_star": c_s,
        "chi1": chi1_,
        "chi_c": chi_c_,
        "xi_q": jnp.where(jnp.isnan(chi_q), jnp.nan, _xi(omq)),
        "xi_c": jnp.where(jnp.isnan(chi_c_), jnp.nan, _xi(omc)),
        "unresolved": unresolved | unresolved_q,
    }


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def _summary_jit(sw2, sb2, q0, static, order, order_2d, num_iters, num_iters_c, batch_size):
    shape = sw2.shape
    flat = [a.reshape(-1) for a in (sw2, sb2, q0)]
    if batch_size and flat[0].size > batch_size:
        out = jax.lax.map(
            lambda args: _summary(*args, static, order, order_2d, num_iters, num_iters_c),
            tuple(flat),
            batch_size=batch_size,
        )
    else:
        out = _summary(*flat, static, order, order_2d, num_iters, num_iters_c)
    return {k: v.reshape(shape) for k, v in out.items()}


# --- public API ----------------------------------------------------------------------------------


def q_map(
    q: ArrayLike,
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    *,
    order: int = DEFAULT_ORDER,
) -> Array:
    r"""One step of the length map, :math:`q^{l+1} = \sigma_w^2 E[\phi(\sqrt{q^l} z)^2] +
    \sigma_b^2` (Poole et al. 2016, eq. 3).

    Args:
      q: pre-activation variance :math:`q^l > 0`.
      sw2: :math:`\sigma_w^2 = N\operatorname{Var}(W) \ge 0`.
      sb2: :math:`\sigma_b^2 = \operatorname{Var}(b) \ge 0`.
      activation: a name from :func:`gradflow.activations.names` or an ``Activation``.
      order: Gauss-Legendre nodes per panel of the Gaussian rule (module docstring).

    Returns:
      :math:`q^{l+1}`, the broadcast shape of the inputs.
    """
    static = _resolve(activation)
    order = _check_order("order", order)
    _checks.positive("q", q, "a pre-activation variance")
    sw2, sb2, q = _variances(sw2, sb2, q)
    return _q_map_jit(q, sw2, sb2, static, order)


def c_map(
    c: ArrayLike,
    q: ArrayLike,
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    *,
    order_2d: int = DEFAULT_ORDER_2D,
) -> Array:
    r"""One step of the correlation map for two inputs of equal length :math:`q` (Poole et al.
    2016, eq. 5):

    .. math::

        c^{l+1} = \frac{\sigma_w^2 E[\phi(u_1)\phi(u_2)] + \sigma_b^2}{q^{l+1}}, \quad
        u_1 = \sqrt q z_1,\ u_2 = \sqrt q (c z_1 + \sqrt{1-c^2} z_2),

    with :math:`q^{l+1}` = :func:`q_map` of :math:`q`. Integrated in polar coordinates split at
    the kink rays (module docstring); :math:`q^{l+1}` is integrated by the same rule at
    :math:`c = 1`, so that ``c_map(1, q, ...) == 1`` exactly (identical inputs stay identical)
    and the quadrature error cancels near :math:`c = 1`.

    Args:
      c: correlation in :math:`[-1, 1]`; q: the common length :math:`q > 0`;
      sw2, sb2, activation: as in :func:`q_map`; order_2d: Gauss-Legendre nodes per panel of
      the polar rule (module docstring).
    """
    static = _resolve(activation)
    order_2d = _check_order("order_2d", order_2d)
    _checks.correlation("c", c)
    _checks.positive("q", q, "a pre-activation variance")
    sw2, sb2, q, c = _variances(sw2, sb2, q, c)
    return _c_map_jit(c, q, sw2, sb2, static, order_2d)[0]


def q_star(
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    *,
    q0: ArrayLike = 1.0,
    order: int = DEFAULT_ORDER,
    num_iters: int = 64,
) -> Array:
    r"""The fixed point :math:`q^* = \sigma_w^2 E[\phi(\sqrt{q^*} z)^2] + \sigma_b^2` reached from
    :math:`q^0` = ``q0``.

    Safeguarded Newton on :math:`F(q) - q` with :math:`F'(q) = \sigma_w^2 E[\phi'^2 +
    \phi\phi'']` (plus :math:`\sigma_w^2 (\phi'(0^+)-\phi'(0^-))\phi(0)/\sqrt{2\pi q}` at a kink),
    ``num_iters`` steps. ``inf`` where the length grows without bound (no finite fixed point, e.g.
    ReLU with :math:`\sigma_w^2 \ge 2`); 0 (to rounding) where the attracting
    fixed point is 0 (odd activations with :math:`\sigma_b^2 = 0` in the ordered phase). ReLU:
    :math:`q^* = \sigma_b^2 / (1 - \sigma_w^2/2)` (:func:`relu_q_star`).
    Differentiable (implicit-function derivative :math:`\partial_\theta F / (1 - F'(q^*))`).

    Args:
      sw2, sb2: broadcastable arrays of :math:`\sigma_w^2, \sigma_b^2 \ge 0`.
      activation: name or ``Activation``.
      q0: starting length :math:`> 0`; order: Gaussian rule; num_iters: Newton steps.

    Example:
      ReLU's closed form :math:`q^* = \sigma_b^2 / (1 - \sigma_w^2/2)`:

      >>> round(float(gf.meanfield.q_star(1.0, 0.5, "relu")), 5)
      1.0
    """
    static = _resolve(activation)
    order = _check_order("order", order)
    num_iters = _checks.size("num_iters", num_iters)
    _checks.positive("q0", q0, "the starting pre-activation variance")
    sw2, sb2, q0 = _variances(sw2, sb2, q0)
    return _q_star_jit(sw2, sb2, q0, static, order, num_iters)[0]


def chi1(
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    *,
    q: ArrayLike | None = None,
    q0: ArrayLike = 1.0,
    order: int = DEFAULT_ORDER,
    num_iters: int = 64,
) -> Array:
    r""":math:`\chi_1 = \sigma_w^2 E[\phi'(\sqrt{q^*} z)^2]`, the per-layer factor of the
    gradient variance (Schoenholz et al. 2017, eq. 6; Poole et al. 2016).

    :math:`\chi_1 < 1`: ordered phase, gradients vanish like :math:`\chi_1^L`; :math:`> 1`:
    chaotic, they explode. ReLU: :math:`\chi_1 = \sigma_w^2/2` (:func:`relu_chi1`). Where
    :math:`q^* = \infty`, the :math:`q \to \infty` limit :math:`\sigma_w^2(\phi'(+\infty)^2 +
    \phi'(-\infty)^2)/2` (module docstring).

    Args:
      sw2, sb2, activation: as in :func:`q_star`.
      q: evaluate at this length instead of :math:`q^*` (e.g. a layer's :math:`q^l`).
      q0, order, num_iters: passed to :func:`q_star`.

    Example:
      ReLU is critical at :math:`\sigma_w^2 = 2` (:math:`\chi_1 = \sigma_w^2 / 2`):

      >>> round(float(gf.meanfield.chi1(2.0, 0.0, "relu")), 5)
      1.0
    """
    static = _resolve(activation)
    order = _check_order("order", order)
    if q is not None:
        _checks.positive("q", q, "a pre-activation variance")
        sw2, sb2, q = _variances(sw2, sb2, q)
        return _chi1_at_q_jit(q, sw2, static, order)
    num_iters = _checks.size("num_iters", num_iters)
    _checks.positive("q0", q0, "the starting pre-activation variance")
    sw2, sb2, q0 = _variances(sw2, sb2, q0)
    return _q_star_jit(sw2, sb2, q0, static, order, num_iters)[1]


class DepthScales(NamedTuple):
    r"""Depth scales of Schoenholz et al. 2017: signals' lengths approach :math:`q^*` like
    :math:`e^{-l/\xi_q}`, correlations approach :math:`c^*` like :math:`e^{-l/\xi_c}`."""

    xi_q: Array
    xi_c: Array


def _summary_public(sw2, sb2, activation, q0, order, order_2d, num_iters, num_iters_c, batch):
    static = _resolve(activation)
    order = _check_order("order", order)
    order_2d = _check_order("order_2d", order_2d)
    num_iters = _checks.size("num_iters", num_iters)
    num_iters_c = _checks.size("num_iters_c", num_iters_c)
    _checks.positive("q0", q0, "the starting pre-activation variance")
    sw2, sb2, q0 = _variances(sw2, sb2, q0)
    out = _summary_jit(sw2, sb2, q0, static, order, order_2d, num_iters, num_iters_c, batch)
    unresolved = out.pop("unresolved")
    host = _checks.concrete(unresolved)
    if host is not None and host.any():
        import warnings

        dtype = sw2.dtype
        hint = (
            "; pass float64 inputs under jax.enable_x64 to resolve them"
            if jnp.finfo(dtype).bits < 64
            else ""
        )
        warnings.warn(
            f"gradflow.meanfield: {int(host.sum())} point(s) lie within {dtype} rounding of the "
            f"critical line (0 < |chi1 - 1| or |chi_q - 1| < {_RESOLVE_ULPS} ulps): their depth "
            f"scales are reported as inf and c* = chi_c = 1{hint}",
            RuntimeWarning,
            stacklevel=3,
        )
    return out


def c_star(
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    *,
    q0: ArrayLike = 1.0,
    order: int = DEFAULT_ORDER,
    order_2d: int = DEFAULT_ORDER_2D,
    num_iters: int = 64,
    num_iters_c: int = 40,
) -> Array:
    r"""The attracting fixed point :math:`c^*` of the c-map at :math:`q = q^*` (Poole et al.
    2016): 1 in the ordered phase (:math:`\chi_1 \le 1`), below 1 in the chaotic phase (0 for odd
    activations with :math:`\sigma_b^2 = 0`). Newton from :math:`c = 0` with :math:`dc^{l+1}/dc =
    \chi_c(c)`, ``num_iters_c`` steps; other arguments as in :func:`q_star` and :func:`c_map`.
    """
    return _summary_public(sw2, sb2, activation, q0, order, order_2d, num_iters, num_iters_c, None)[
        "c_star"
    ]


def chi_c(
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    *,
    q0: ArrayLike = 1.0,
    order: int = DEFAULT_ORDER,
    order_2d: int = DEFAULT_ORDER_2D,
    num_iters: int = 64,
    num_iters_c: int = 40,
) -> Array:
    r""":math:`\chi_c = \sigma_w^2 E[\phi'(u_1^*)\phi'(u_2^*)]`, the slope of the c-map at
    :math:`c^*` (Schoenholz et al. 2017, eq. 9); equals :math:`\chi_1` in the ordered phase."""
    return _summary_public(sw2, sb2, activation, q0, order, order_2d, num_iters, num_iters_c, None)[
        "chi_c"
    ]


def depth_scales(
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    *,
    q0: ArrayLike = 1.0,
    order: int = DEFAULT_ORDER,
    order_2d: int = DEFAULT_ORDER_2D,
    num_iters: int = 64,
    num_iters_c: int = 40,
) -> DepthScales:
    r"""The depth scales :math:`(\xi_q, \xi_c)` (Schoenholz et al. 2017, eqs. 5 and 9):

    .. math::

        \xi_q^{-1} = -\log\bigl(\chi_1 + \sigma_w^2 E[\phi''(\sqrt{q^*}z)\phi(\sqrt{q^*}z)]\bigr),
        \qquad \xi_c^{-1} = -\log \chi_c.

    :math:`\xi_c` diverges on the critical line :math:`\chi_1 = 1`; trainable depth is about
    :math:`6\xi_c`; within rounding of the line (:math:`|\chi_1 - 1| \lesssim 10^{-5}` in float32)
    it is ``inf``. For kinked activations :math:`\phi''` includes the delta at the kink (zero for
    all registered ones, since :math:`\phi(0) = 0` there). Arguments as in :func:`c_star`.

    Example:
      >>> xi_q, xi_c = gf.meanfield.depth_scales(1.5, 0.05, "tanh")
      >>> print(f"xi_c = {float(xi_c):.1f} layers")
      xi_c = 15.8 layers
    """
    out = _summary_public(sw2, sb2, activation, q0, order, order_2d, num_iters, num_iters_c, None)
    return DepthScales(out["xi_q"], out["xi_c"])


class PhaseDiagram(NamedTuple):
    r"""Mean-field quantities on a grid; every field but ``sw2``/``sb2`` has shape
    ``(len(sb2), len(sw2))`` (rows: :math:`\sigma_b^2`, columns: :math:`\sigma_w^2`), ready for
    ``plt.pcolormesh(pd.sw2, pd.sb2, pd.chi1)``."""

    sw2: Array
    sb2: Array
    q_star: Array
    c_star: Array
    chi1: Array
    chi_c: Array
    xi_q: Array
    xi_c: Array


def phase_diagram(
    sw2_grid: ArrayLike,
    sb2_grid: ArrayLike,
    activation: ActivationLike,
    *,
    q0: ArrayLike = 1.0,
    order: int = DEFAULT_ORDER,
    order_2d: int = 4,
    num_iters: int = 64,
    num_iters_c: int = 30,
    batch_size: int = 1024,
) -> PhaseDiagram:
    r""":math:`q^*, c^*, \chi_1, \chi_c, \xi_q, \xi_c` on the grid ``sb2_grid x sw2_grid`` in one
    jitted, vectorised call (Poole et al. 2016 fig. 3; Schoenholz et al. 2017 fig. 1).

    The grid is flattened and mapped in batches of ``batch_size`` points (``jax.lax.map``) to bound
    memory; ``order_2d`` defaults to 4 here (within :math:`10^{-4}` of ``order_2d=12`` for tanh up
    to :math:`\sigma_w^2 = 10^6`, ample for a figure; the default 6 of :func:`depth_scales` gives
    :math:`\sim 10^{-5}`).

    Args:
      sw2_grid: 1-D array of :math:`\sigma_w^2` values (columns).
      sb2_grid: 1-D array of :math:`\sigma_b^2` values (rows).
      activation: name or ``Activation``.
      q0, order, order_2d, num_iters, num_iters_c: as in :func:`depth_scales`.
      batch_size: grid points per vectorised batch.
    """
    for name, g in (("sw2_grid", sw2_grid), ("sb2_grid", sb2_grid)):
        g = _checks.array(name, g, finite=False, nonempty=False)
        if g.ndim != 1 or g.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D array, got shape {g.shape}")
        _checks.nonneg(name, g, "a grid of variances")
    batch_size = _checks.size("batch_size", batch_size)
    sw2_grid, sb2_grid = _as_float(sw2_grid), _as_float(sb2_grid)
    sw2, sb2 = jnp.meshgrid(sw2_grid, sb2_grid)
    out = _summary_public(
        sw2, sb2, activation, q0, order, order_2d, num_iters, num_iters_c, batch_size
    )
    return PhaseDiagram(sw2=sw2_grid, sb2=sb2_grid, **out)


# --- the critical line ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _critical_sw2_jit(sb2, lo, hi, static, order, num_iters, num_bisect):
    def chi(s, b):
        return _q_star_core(s, b, jnp.ones_like(s), static, order, num_iters)[1]

    sb2_ = jax.lax.stop_gradient(sb2)

    def step(_, bracket):
        a, b = bracket
        mid = jnp.sqrt(a * b)  # bisection in log sw2
        below = chi(mid, sb2_) < 1.0  # nan (q* = inf) counts as above the line
        return jnp.where(below, mid, a), jnp.where(below, b, mid)

    lo = jnp.broadcast_to(lo, sb2.shape)
    hi = jnp.broadcast_to(hi, sb2.shape)
    chi_lo, chi_hi = chi(lo, sb2_), chi(hi, sb2_)
    bracketed = (chi_lo < 1.0) & ~(chi_hi < 1.0)
    a, b = jax.lax.fori_loop(0, num_bisect, step, (lo, hi))
    # Implicit derivative d sw2_c / d sb2 = -(d chi1/d sb2) / (d chi1/d sw2), taken at a.
    value, dchi_dsw2 = jax.jvp(lambda s: chi(s, sb2_), (a,), (jnp.ones_like(a),))
    dchi_dsw2 = jax.lax.stop_gradient(dchi_dsw2)
    chi_sb2 = chi(a, sb2)
    safe = jnp.where(dchi_dsw2 > 0, dchi_dsw2, jnp.inf)
    mid = 0.5 * (a + b)
    out = mid - (chi_sb2 - jax.lax.stop_gradient(chi_sb2)) / safe
    del value
    return jnp.where(bracketed, out, jnp.nan)


def critical_sw2(
    sb2: ArrayLike,
    activation: ActivationLike,
    *,
    bracket: tuple[float, float] = (1e-2, 1e3),
    order: int = DEFAULT_ORDER,
    num_iters: int = 64,
    num_bisect: int = 60,
) -> Array:
    r"""The critical line: :math:`\sigma_w^2` with :math:`\chi_1(\sigma_w^2, \sigma_b^2) = 1`.

    Bisection in :math:`\log\sigma_w^2` on ``bracket`` with ``num_bisect`` steps (relative
    precision :math:`(hi/lo)^{2^{-n}}`, i.e. float rounding by default), treating
    :math:`q^* = \infty` as above the line. tanh: 1 at :math:`\sigma_b^2 = 0`, increasing with
    :math:`\sigma_b^2`; ReLU: 2 for every :math:`\sigma_b^2`. ``nan`` where the bracket does not
    contain a crossing. Differentiable in ``sb2`` (implicit derivative
    :math:`-\partial_{\sigma_b^2}\chi_1 / \partial_{\sigma_w^2}\chi_1`).

    Args:
      sb2: :math:`\sigma_b^2 \ge 0`, any shape.
      activation: name or ``Activation``.
      bracket: ``(lo, hi)`` with :math:`0 < lo < hi` bracketing the crossing.
      order, num_iters: passed to :func:`q_star`; num_bisect: bisection steps.

    Example:
      tanh with :math:`\sigma_b^2 = 0` is critical at :math:`\sigma_w^2 = 1`:

      >>> round(float(gf.meanfield.critical_sw2(0.0, "tanh")), 4)
      1.0
    """
    static = _resolve(activation)
    order = _check_order("order", order)
    num_iters = _checks.size("num_iters", num_iters)
    num_bisect = _checks.size("num_bisect", num_bisect)
    lo, hi = (float(v) for v in bracket)
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"bracket must be (lo, hi) with 0 < lo < hi < inf, got {bracket!r}")
    _checks.nonneg("sb2", sb2, "sigma_b^2 = Var(b)")
    sb2 = _as_float(sb2)
    lo_, hi_ = jnp.asarray(lo, sb2.dtype), jnp.asarray(hi, sb2.dtype)
    return _critical_sw2_jit(sb2, lo_, hi_, static, order, num_iters, num_bisect)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _critical_point_jit(q, static, order):
    act = static.act
    e_phi2, e_dphi2 = _expect(q, order, lambda u: act.fn(u) ** 2, lambda u: act.grad(u) ** 2)
    sw2 = 1.0 / e_dphi2
    return sw2, q - sw2 * e_phi2


def critical_point(
    q_star: ArrayLike, activation: ActivationLike, *, order: int = DEFAULT_ORDER
) -> tuple[Array, Array]:
    r"""The point of the critical line whose fixed point is ``q_star`` (Pennington et al. 2017):

    .. math::

        \sigma_w^2 = 1 / E[\phi'(\sqrt{q^*}z)^2], \qquad
        \sigma_b^2 = q^* - \sigma_w^2 E[\phi(\sqrt{q^*}z)^2],

    so that :math:`\chi_1 = 1` and :math:`q^*` is the fixed point. Small :math:`q^*` is where
    tanh nets with orthogonal weights reach dynamical isometry. A negative :math:`\sigma_b^2`
    means no critical point has that :math:`q^*`. ReLU: :math:`(2, 0)` for every :math:`q^*`.

    Returns:
      ``(sw2, sb2)`` with the shape of ``q_star``.
    """
    static = _resolve(activation)
    order = _check_order("order", order)
    _checks.positive("q_star", q_star, "a pre-activation variance")
    return _critical_point_jit(_as_float(q_star), static, order)


# --- closed forms (cross-checks) -----------------------------------------------------------------


def _check_slope(negative_slope: Any) -> float:
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, int | float | np.number):
        raise TypeError(f"negative_slope must be a real number, got {negative_slope!r}")
    if not math.isfinite(negative_slope):
        raise ValueError(f"negative_slope must be finite, got {negative_slope}")
    return float(negative_slope)


def relu_q_star(sw2: ArrayLike, sb2: ArrayLike, *, negative_slope: float = 0.0) -> Array:
    r"""Closed-form :math:`q^*` of (leaky) ReLU: :math:`E[\phi(\sqrt q z)^2] = \tfrac{1+a^2}{2}q`,
    so :math:`q^* = \sigma_b^2 / (1 - \sigma_w^2 (1+a^2)/2)`; ``inf`` where that is not positive
    (0 when :math:`\sigma_b^2 = 0` below the critical point)."""
    negative_slope = _check_slope(negative_slope)
    sw2, sb2 = _variances(sw2, sb2)
    slope = sw2 * (1 + negative_slope**2) / 2
    denom = 1.0 - slope
    return jnp.where(denom > 0, sb2 / jnp.where(denom > 0, denom, 1.0), jnp.inf)


def relu_chi1(sw2: ArrayLike, *, negative_slope: float = 0.0) -> Array:
    r"""Closed-form :math:`\chi_1 = \sigma_w^2 (1 + a^2)/2` of (leaky) ReLU (independent of q)."""
    negative_slope = _check_slope(negative_slope)
    _checks.nonneg("sw2", sw2, "sigma_w^2 = N Var(W)")
    return _as_float(sw2) * (1 + negative_slope**2) / 2


def relu_c_map(
    c: ArrayLike, q: ArrayLike, sw2: ArrayLike, sb2: ArrayLike, *, negative_slope: float = 0.0
) -> Array:
    r"""Closed-form c-map of (leaky) ReLU via the arc-cosine kernel (Cho & Saul 2009):

    .. math::

        E[\mathrm{relu}(u_1)\mathrm{relu}(u_2)] = \frac{q}{2\pi}\bigl(\sqrt{1-c^2} +
        (\pi - \arccos c)\, c\bigr),

    and for slope :math:`a`, :math:`\phi = (1-a)\,\mathrm{relu} + a\,\mathrm{id}` gives
    :math:`(1-a)^2 E[\mathrm{relu}\,\mathrm{relu}] + a q c`. Returns
    :math:`(\sigma_w^2 E[\phi\phi] + \sigma_b^2) / (\sigma_w^2 \tfrac{1+a^2}{2} q + \sigma_b^2)`.
    """
    _checks.correlation("c", c)
    _checks.positive("q", q, "a pre-activation variance")
    sw2, sb2, q, c = _variances(sw2, sb2, q, c)
    a = _check_slope(negative_slope)
    k_relu = q / (2 * math.pi) * (jnp.sqrt(1 - c * c) + (math.pi - jnp.arccos(c)) * c)
    e_pp = (1 - a) ** 2 * k_relu + a * q * c
    return (sw2 * e_pp + sb2) / (sw2 * (1 + a * a) / 2 * q + sb2)


# --- propagation through depth: theory and measurement -------------------------------------------


class Propagation(NamedTuple):
    r"""Per-layer statistics, layer axis last (``l = 1..depth``).

    Attributes:
      q: :math:`q^l`, mean square pre-activation :math:`\frac1N\sum_i (h^l_i)^2`.
      c: :math:`c^l`, correlation of the pre-activations of two inputs.
      grad_var: :math:`\tilde q^l = \frac1N \sum_i (\partial C/\partial h^l_i)^2` for
        :math:`C = g \cdot h^L` with :math:`g \sim N(0, I)` (so :math:`\tilde q^L = 1` in theory).
    """

    q: Array
    c: Array
    grad_var: Array


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _propagate_jit(sw2, sb2, q0, c0, static, depth, order, order_2d):
    act = static.act
    q1 = sw2 * q0 + sb2
    c1 = (sw2 * q0 * c0 + sb2) / q1

    def layer(carry, _):
        q, c = carry
        (e_dphi2,) = _expect(q, order, lambda u: act.grad(u) ** 2)
        c_next = 1.0 - _c_map_core(_angle(c), q, sw2, sb2, static, order_2d)[0]
        q_next = _q_map_and_slope(q, sw2, sb2, static, order)[0]
        return (q_next, jnp.clip(c_next, -1.0, 1.0)), (q, c, sw2 * e_dphi2)

    _, (qs, cs, chis) = jax.lax.scan(layer, (q1, c1), None, length=depth)
    # grad_var_l = prod_{k=l}^{L-1} chi(q_k), grad_var_L = 1.
    factors = jnp.concatenate([chis[:-1], jnp.ones_like(chis[:1])])
    grad_var = jnp.flip(jnp.cumprod(jnp.flip(factors, 0), axis=0), 0)
    return Propagation(*(jnp.moveaxis(a, 0, -1) for a in (qs, cs, grad_var)))


def propagate(
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    depth: int,
    *,
    q0: ArrayLike = 1.0,
    c0: ArrayLike = 0.5,
    order: int = DEFAULT_ORDER,
    order_2d: int = DEFAULT_ORDER_2D,
) -> Propagation:
    r"""Mean-field prediction of :func:`measure_propagation`: iterate the maps through ``depth``
    layers and run the backward recursion.

    Two inputs of mean square ``q0`` and correlation ``c0`` give :math:`q^1 = \sigma_w^2 q_0 +
    \sigma_b^2`, :math:`c^1 = (\sigma_w^2 q_0 c_0 + \sigma_b^2)/q^1`; then
    :math:`q^{l+1}` = :func:`q_map`, :math:`c^{l+1}` = :func:`c_map`, and backward
    :math:`\tilde q^L = 1`, :math:`\tilde q^l = \tilde q^{l+1}\,\sigma_w^2 E[\phi'(\sqrt{q^l}z)^2]`
    (:math:`= \tilde q^{l+1}\chi_1` at :math:`q^*`; Schoenholz et al. 2017, eq. 13, equal widths).

    Returns:
      :class:`Propagation` with arrays of shape ``(*broadcast(sw2, sb2, q0, c0).shape, depth)``.
    """
    static = _resolve(activation)
    depth = _checks.size("depth", depth)
    order = _check_order("order", order)
    order_2d = _check_order("order_2d", order_2d)
    _checks.positive("q0", q0, "the inputs' mean square")
    _checks.correlation("c0", c0)
    sw2, sb2, q0, c0 = _variances(sw2, sb2, q0, c0)
    return _propagate_jit(sw2, sb2, q0, c0, static, depth, order, order_2d)


_WEIGHTS = ("gaussian", "orthogonal")


def _check_weights(weights: str) -> str:
    if weights not in _WEIGHTS:
        raise ValueError(f"weights must be one of {_WEIGHTS}, got {weights!r}")
    return weights


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8, 9))
def _measure_jit(key, sw2, sb2, q0, c0, static, width, depth, weights, dtype):
    act = static.act
    k_in, k_g, k_w, k_b = jax.random.split(key, 4)
    # Two inputs with mean square q0 and correlation c0 exactly.
    u, v = jax.random.normal(k_in, (2, width), dtype)
    u = u / jnp.linalg.norm(u)
    v = v - (v @ u) * u
    v = v / jnp.linalg.norm(v)
    scale = jnp.sqrt(width * q0)
    x = jnp.stack([u, c0 * u + jnp.sqrt(1 - c0 * c0) * v]) * scale  # (2, width)
    if weights == "gaussian":
        w_init = _initializers.get("scaled_normal", scale=1.0)  # N(0, 1/N), scaled below
        w_scale = jnp.sqrt(sw2)
    else:
        w_init = _initializers.get("orthogonal", gain=1.0)
        w_scale = jnp.sqrt(sw2)
    b_init = _initializers.get("normal", std=1.0)
    ws = jax.vmap(lambda k: w_init(k, (width, width), dtype))(jax.random.split(k_w, depth))
    bs = jax.vmap(lambda k: b_init(k, (width,), dtype))(jax.random.split(k_b, depth))
    ws = ws * w_scale
    bs = bs * jnp.sqrt(sb2)
    g = jax.random.normal(k_g, (width,), dtype)

    def forward(perturb):
        # h^1 = x W^1 + b^1, h^{l+1} = phi(h^l) W^{l+1} + b^{l+1}; perturb_l is added to h^l so
        # that d C / d perturb_l = d C / d h^l.
        def layer(a, inputs):
            w, b, p, first = inputs
            h = jnp.where(first, a, act.fn(a)) @ w + b + p
            return h, h

        first = jnp.arange(depth) == 0
        _, hs = jax.lax.scan(layer, x, (ws, bs, perturb, first))
        return hs  # (depth, 2, width)

    zeros = jnp.zeros((depth, 2, width), dtype)
    hs, vjp = jax.vjp(forward, zeros)
    cotangent = jnp.zeros_like(hs).at[-1, 0].set(g)  # C = g . h^L of the first input
    (deltas,) = vjp(cotangent)
    q = jnp.mean(hs**2, axis=-1)  # (depth, 2)
    cross = jnp.mean(hs[:, 0] * hs[:, 1], axis=-1)
    return Propagation(
        q=jnp.mean(q, axis=-1),
        c=cross / jnp.sqrt(q[:, 0] * q[:, 1]),
        grad_var=jnp.mean(deltas[:, 0] ** 2, axis=-1),
    )


@_config.wrap
def measure_propagation(
    key: Array,
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    *,
    width: int,
    depth: int,
    q0: ArrayLike = 1.0,
    c0: ArrayLike = 0.5,
    weights: str = "gaussian",
    dtype: DTypeLike | None = None,
) -> Propagation:
    r"""Measured counterpart of :func:`propagate` on one sampled finite-width network.

    Samples a ``depth``-layer, ``width``-wide net with :math:`W \sim N(0, \sigma_w^2/N)`
    (``weights="gaussian"``, the ``scaled_normal`` initializer) or :math:`\sigma_w O` with
    :math:`O` Haar orthogonal (``"orthogonal"``), biases :math:`N(0, \sigma_b^2)`, two inputs of
    mean square ``q0`` and correlation ``c0`` exactly, and measures per layer the mean square
    pre-activation :math:`q^l` (averaged over the two inputs), their correlation :math:`c^l`, and
    :math:`\tilde q^l = \frac1N\|\partial C/\partial h^l\|^2` for :math:`C = g\cdot h^L` with
    :math:`g \sim N(0, I)` drawn from ``key`` (one backward pass, first input). Jitted; vmap over
    keys for several networks. ``key`` is a typed key, ``jax.random.key(seed)`` (raw ``uint32``
    key data from ``jax.random.PRNGKey`` is accepted too).

    Returns:
      :class:`Propagation` with arrays of shape ``(depth,)``.
    """
    key = _checks.prng_key("key", key)
    static = _resolve(activation)
    width = _checks.size("width", width)
    depth = _checks.size("depth", depth)
    weights = _check_weights(weights)
    _checks.positive("q0", q0, "the inputs' mean square")
    _checks.correlation("c0", c0)
    sw2, sb2, q0, c0 = _variances(sw2, sb2, q0, c0)
    dtype = _checks.float_dtype("dtype", dtype) or sw2.dtype
    if sw2.ndim:
        raise ValueError(
            f"sw2, sb2, q0 and c0 must be scalars here (vmap for grids), got {sw2.shape}"
        )
    return _measure_jit(key, sw2, sb2, q0, c0, static, width, depth, weights, dtype)
