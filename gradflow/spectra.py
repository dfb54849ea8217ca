r"""Input-output Jacobian spectra of deep nets and their free-probability moments.

For a net :math:`x \mapsto a^L` with :math:`h^l = W^{l\top} a^{l-1} + b^l`,
:math:`a^l = \phi(h^l)` (:math:`a^0 = x`), the input-output Jacobian is the product

.. math::

    J = \frac{\partial a^L}{\partial x} = D_L W_L^\top D_{L-1} W_{L-1}^\top \cdots D_1 W_1^\top,
    \qquad D_l = \operatorname{diag}\phi'(h^l),

and every backpropagated gradient passes through :math:`J^\top`. Its squared singular values
(the eigenvalues of :math:`JJ^\top`) say how much each input direction is stretched: mean 1
keeps gradients from vanishing or exploding *on average* (the mean-field criticality of
:mod:`gradflow.meanfield`), and a spectrum concentrated at 1 -- *dynamical isometry* -- keeps
*every* direction at unit gain (Saxe et al. 2014; Pennington et al. 2017).

Free-probability moments (Pennington, Schoenholz, Ganguli 2017, 2018)
----------------------------------------------------------------------
In the wide limit the factors are asymptotically free and the S-transforms multiply,
:math:`S_{JJ^\top} = \prod_l S_{W_lW_l^\top} S_{D_l^2}`. Writing a measure's S-transform as
:math:`S(z) = m_1^{-1}\,(1 - v z + O(z^2))` with :math:`v = m_2/m_1^2 - 1` (expand the inverse of
the moment generating function :math:`\sum_k m_k z^k`), the product gives, for every depth :math:`L`
exactly (not only to leading order),

.. math::

    m_1(JJ^\top) = \prod_{l=1}^L \sigma_w^2 \mu_1(q^l), \qquad
    \frac{m_2}{m_1^2} - 1 = \sum_{l=1}^L \Bigl(\frac{\mu_2(q^l)}{\mu_1(q^l)^2} - 1 - s_1\Bigr),
    \qquad \mu_k(q) = E[\phi'(\sqrt q z)^{2k}],

with :math:`-s_1 = v(W W^\top/\sigma_w^2) = 1` for Gaussian weights (Marchenko-Pastur, ratio 1) and
:math:`0` for orthogonal ones. So the variance of the eigenvalues is
:math:`\sigma^2_{JJ^\top} = m_1^2 \sum_l (\mu_2/\mu_1^2 - 1 - s_1)`; at a critical point with all
layers at :math:`q^*` (:math:`m_1 = 1`) this is Pennington et al.'s
:math:`\sigma^2_{JJ^\top} = L(\mu_2/\mu_1^2 - 1 - s_1)`. Consequences, tested in
``tests/test_spectra.py``:

* deep linear nets (:math:`\mu_k = 1`): Gaussian :math:`m_1 = \sigma_w^{2L}`,
  :math:`\sigma^2 = L\sigma_w^{4L}` (at :math:`\sigma_w^2 = 1`, :math:`m_2 = L + 1`, the
  Fuss-Catalan number); orthogonal: every singular value is exactly :math:`\sigma_w^L`;
* ReLU (:math:`\phi'^2 \in \{0, 1\}`, :math:`\mu_1 = \mu_2 = 1/2`) at its critical point
  :math:`\sigma_w^2 = 2`: :math:`\sigma^2 = L(1 - s_1)` -- :math:`L` for orthogonal and
  :math:`2L` for Gaussian weights -- so ReLU nets cannot be dynamically isometric (and half of
  the singular values vanish already after one layer);
* tanh with orthogonal weights on the critical line near :math:`q^* \to 0`
  (:func:`gradflow.meanfield.critical_point`): :math:`\mu_2/\mu_1^2 \to 1` and
  :math:`\sigma^2 \to 0` -- dynamical isometry.

Usage::

    params = gf.spectra.init_network(key, width=256, depth=32, sw2=1.0, weights="orthogonal")
    x = gf.spectra.network_input(key, 256, q=0.01, sw2=1.0, sb2=0.0)
    net = lambda x: gf.spectra.apply_network(params, x, "tanh")
    s = gf.spectra.jacobian_singular_values(net, x)                          # (width,)
    per_depth = gf.spectra.layer_jacobian_singular_values(params, x, "tanh")   # (depth, width)
    gf.spectra.spectrum_moments(per_depth)                                   # measured m1, m2
    gf.spectra.jacobian_moments(1.0, 0.0, "tanh", 32, weights="orthogonal")  # predicted

References:
  A. Saxe, J. McClelland, S. Ganguli, "Exact solutions to the nonlinear dynamics of learning in
  deep linear neural networks", ICLR 2014.
  J. Pennington, S. Schoenholz, S. Ganguli, "Resurrecting the sigmoid in deep learning through
  dynamical isometry: theory and practice", NeurIPS 2017.
  J. Pennington, S. Schoenholz, S. Ganguli, "The emergence of spectral universality in deep
  networks", AISTATS 2018.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from gradflow import _checks
from gradflow import activations as _activations
from gradflow import config as _config
from gradflow import initializers as _initializers
from gradflow import meanfield as _meanfield

__all__ = [
    "NetworkParams",
    "SpectralMoments",
    "apply_network",
    "init_network",
    "jacobian_moments",
    "jacobian_singular_values",
    "layer_jacobian_singular_values",
    "network_input",
    "spectrum_moments",
]

Array = jax.Array
ActivationLike = str | _activations.Activation
WEIGHTS = ("gaussian", "orthogonal")
#: Minus the first S-transform coefficient of W W^T / sigma_w^2: its normalised variance.
_WEIGHT_SPREAD = {"gaussian": 1.0, "orthogonal": 0.0}


def _check_weights(weights: Any) -> str:
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    return weights


# --- exact Jacobian spectra ----------------------------------------------------------------------


@_config.wrap
def jacobian_singular_values(fn: Callable[[Array], Array], x: ArrayLike) -> Array:
    r"""Exact singular values of the Jacobian :math:`\partial\,\mathrm{fn}/\partial x` at one input.

    The Jacobian is formed by forward-mode (:func:`jax.jacfwd`, when the input is no larger than
    the output) or reverse-mode (:func:`jax.jacrev`) autodiff, reshaped to
    ``(fn(x).size, x.size)``, and its singular values computed by SVD.

    Args:
      fn: a function of one array returning one array (any shapes).
      x: the input (one example, not a batch: a batch axis would make :math:`J` block diagonal).

    Returns:
      ``min(fn(x).size, x.size)`` singular values in descending order.

    Raises:
      TypeError: ``fn`` is not callable, ``x`` is not floating, or ``fn`` does not return a
        single array.

    Example:
      >>> gf.spectra.jacobian_singular_values(lambda x: 2.0 * x, jnp.ones(3))
      Array([2., 2., 2.], dtype=float32)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    x = _checks.array("x", x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating array to differentiate, got dtype {x.dtype}")
    out = jax.eval_shape(fn, x)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"fn must return a single array, got {jax.tree.structure(out)}")
    n_in, n_out = x.size, int(np.prod(out.shape))
    jac = (jax.jacfwd if n_in <= n_out else jax.jacrev)(fn)(x)
    return jnp.linalg.svd(jnp.reshape(jac, (n_out, n_in)), compute_uv=False)


# --- deep random nets ----------------------------------------------------------------------------


class NetworkParams(NamedTuple):
    """A deep fully connected net of constant width (a pytree of arrays).

    Attributes:
      weights: ``(depth, width, width)`` kernels, ``(fan_in, fan_out)`` as in Flax ``Dense``.
      biases: ``(depth, width)``.
    """

    weights: Array
    biases: Array


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _init_network_jit(key, sw2, sb2, width, depth, weights, dtype):
    k_w, k_b = jax.random.split(key)
    if weights == "gaussian":
        w_init = _initializers.get("scaled_normal", scale=1.0)  # N(0, 1/N)
    else:
        w_init = _initializers.get("orthogonal", gain=1.0)  # Haar orthogonal
    b_init = _initializers.get("normal", std=1.0)
    ws = jax.vmap(lambda k: w_init(k, (width, width), dtype))(jax.random.split(k_w, depth))
    bs = jax.vmap(lambda k: b_init(k, (width,), dtype))(jax.random.split(k_b, depth))
    return NetworkParams(ws * jnp.sqrt(sw2).astype(dtype), bs * jnp.sqrt(sb2).astype(dtype))


@_config.wrap
def init_network(
    key: Array,
    width: int,
    depth: int,
    *,
    sw2: ArrayLike = 1.0,
    sb2: ArrayLike = 0.0,
    weights: str = "gaussian",
    dtype: DTypeLike | None = None,
) -> NetworkParams:
    r"""Sample a ``depth``-layer, ``width``-wide net in the mean-field parameterisation.

    ``weights="gaussian"``: :math:`W_{ij} \sim N(0, \sigma_w^2/N)` (gradflow's
    ``scaled_normal`` initializer); ``"orthogonal"``: :math:`W = \sigma_w O` with :math:`O` Haar
    orthogonal (``orthogonal``), which has the same :math:`\operatorname{Var}(W_{ij}) =
    \sigma_w^2/N`; biases :math:`N(0, \sigma_b^2)`. Jitted (``sw2``/``sb2`` may be traced).

    Args:
      key: a typed PRNG key, ``jax.random.key(seed)`` (raw ``jax.random.PRNGKey`` data is
        accepted too).
      width, depth: :math:`N` and :math:`L`.
      sw2: :math:`\sigma_w^2 = N\operatorname{Var}(W)`; sb2: :math:`\sigma_b^2`.
      weights: ``"gaussian"`` or ``"orthogonal"``.
      dtype: float dtype (default: JAX's default float).
    """
    key = _checks.prng_key("key", key)
    width = _checks.size("width", width)
    depth = _checks.size("depth", depth)
    weights = _check_weights(weights)
    _checks.nonneg("sw2", sw2, "sigma_w^2 = N Var(W)")
    _checks.nonneg("sb2", sb2, "sigma_b^2 = Var(b)")
    dtype = _checks.float_dtype("dtype", dtype) or jnp.dtype(jnp.result_type(float))
    return _init_network_jit(
        key, jnp.asarray(sw2, dtype), jnp.asarray(sb2, dtype), width, depth, weights, dtype
    )


def _check_params(params: Any) -> None:
    if not isinstance(params, NetworkParams):
        raise TypeError(f"params must be a NetworkParams, got {type(params).__name__}")
    w, b = params
    if w.ndim != 3 or w.shape[1] != w.shape[2] or b.shape != (w.shape[0], w.shape[1]):
        raise ValueError(
            "params must hold weights (depth, width, width) and biases (depth, width); got "
            f"{w.shape} and {b.shape}"
        )


def _check_input(x: Array, width: int) -> None:
    if x.shape != (width,):
        raise ValueError(f"x must be one input of shape ({width},), got shape {x.shape}")


@functools.partial(jax.jit, static_argnums=2)
def _apply_jit(params, x, act):
    def layer(a, wb):
        a = act.fn(a @ wb[0] + wb[1])
        return a, None

    out, _ = jax.lax.scan(layer, x, params)
    return out


@_config.wrap
def apply_network(params: NetworkParams, x: ArrayLike, activation: ActivationLike) -> Array:
    r"""The net's output :math:`a^L = \phi(h^L)` (post-activation, so that
    :math:`J = \prod_l D_l W_l^\top` as in Pennington et al. 2017) for one input ``x`` of shape
    ``(width,)``."""
    _check_params(params)
    act = _activations.get(activation)
    x = _checks.array("x", x)
    _check_input(x, params.weights.shape[1])
    return _apply_jit(params, x, act)


@functools.partial(jax.jit, static_argnums=2)
def _layer_svals_jit(params, x, act):
    eye = jnp.eye(x.shape[0], dtype=params.weights.dtype)

    def layer(carry, wb):
        a, jac = carry  # jac = d a^{l-1} / d x, (width, width) with rows = units
        h = a @ wb[0] + wb[1]
        jac = act.grad(h)[:, None] * (wb[0].T @ jac)
        return (act.fn(h), jac), jnp.linalg.svd(jac, compute_uv=False)

    _, svals = jax.lax.scan(layer, (x, eye), params)
    return svals


@_config.wrap
def layer_jacobian_singular_values(
    params: NetworkParams, x: ArrayLike, activation: ActivationLike
) -> Array:
    r"""Singular values of :math:`J_l = \partial a^l / \partial x` for every depth
    :math:`l = 1..L` in one pass: :math:`J_l = D_l W_l^\top J_{l-1}`, :math:`J_0 = I`, with the
    closed-form :math:`\phi'` of the activation registry.

    Returns:
      ``(depth, width)`` singular values, each row in descending order; the last row equals
      :func:`jacobian_singular_values` of :func:`apply_network` at ``x``.
    """
    _check_params(params)
    act = _activations.get(activation)
    x = _checks.array("x", x)
    _check_input(x, params.weights.shape[1])
    return _layer_svals_jit(params, x, act)


def network_input(
    key: Array, width: int, q: ArrayLike, *, sw2: ArrayLike = 1.0, sb2: ArrayLike = 0.0
) -> Array:
    r"""A random input whose first-layer pre-activations have variance ``q`` in the mean-field
    limit: a uniformly random direction with :math:`\|x\|^2/N = (q - \sigma_b^2)/\sigma_w^2`, so
    that :math:`q^1 = \sigma_w^2\|x\|^2/N + \sigma_b^2 = q` (e.g. ``q = q_star(sw2, sb2, act)``
    puts every layer at the fixed point). ``key`` is a typed PRNG key, ``jax.random.key(seed)``
    (raw ``jax.random.PRNGKey`` data is accepted too)."""
    key = _checks.prng_key("key", key)
    width = _checks.size("width", width)
    _checks.nonneg("sw2", sw2, "sigma_w^2 = N Var(W)")
    _checks.nonneg("sb2", sb2, "sigma_b^2 = Var(b)")
    _checks.nonneg("q", q, "the first layer's pre-activation variance")
    try:
        concrete = tuple(np.asarray(v, np.float64) for v in (q, sb2, sw2))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        concrete = None
    if concrete is not None and np.any(concrete[2] <= 0):
        raise ValueError(
            f"sw2 must be > 0 here (|x|^2 / N = (q - sb2) / sw2), got sw2={sw2}: with sw2 = 0 "
            "no input reaches q"
        )
    if concrete is not None and np.any(concrete[0] < concrete[1]):
        raise ValueError(f"q must be >= sb2 (q = sw2 |x|^2 / N + sb2), got q={q}, sb2={sb2}")
    return _network_input_jit(key, jnp.asarray(q), jnp.asarray(sw2), jnp.asarray(sb2), width)


@functools.partial(jax.jit, static_argnums=4)
def _network_input_jit(key, q, sw2, sb2, width):
    dtype = jnp.result_type(q, sw2, sb2, float)
    u = jax.random.normal(key, (width,), dtype)
    return u * jnp.sqrt(width * (q - sb2) / sw2) / jnp.linalg.norm(u)


# --- moments: measured and predicted -------------------------------------------------------------


class SpectralMoments(NamedTuple):
    r"""Moments of the eigenvalue distribution of :math:`JJ^\top` (squared singular values).

    Attributes:
      mean: :math:`m_1 = \frac1N \operatorname{tr} JJ^\top`, the mean squared singular value.
      second_moment: :math:`m_2 = \frac1N \operatorname{tr} (JJ^\top)^2`.
      variance: :math:`m_2 - m_1^2`, the spread (0 for dynamical isometry).
    """

    mean: Array
    second_moment: Array
    variance: Array


def spectrum_moments(singular_values: ArrayLike, *, axis: int = -1) -> SpectralMoments:
    r"""Measured :class:`SpectralMoments` of :math:`\lambda = s^2` along ``axis`` (e.g. each row of
    :func:`layer_jacobian_singular_values`)."""
    sv = _checks.array("singular_values", singular_values)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -sv.ndim <= axis < sv.ndim:
        raise ValueError(
            f"axis must be an int in [-{sv.ndim}, {sv.ndim}) for singular_values of shape "
            f"{sv.shape}, got {axis!r}"
        )
    lam = sv**2
    m1 = jnp.mean(lam, axis=axis)
    m2 = jnp.mean(lam**2, axis=axis)
    return SpectralMoments(m1, m2, m2 - m1**2)


def jacobian_moments(
    sw2: ArrayLike,
    sb2: ArrayLike,
    activation: ActivationLike,
    depth: int,
    *,
    weights: str = "gaussian",
    q: ArrayLike | None = None,
    order: int = _meanfield.DEFAULT_ORDER,
) -> SpectralMoments:
    r"""Free-probability :class:`SpectralMoments` of :math:`J_lJ_l^\top` for every depth
    :math:`l = 1..` ``depth`` (Pennington et al. 2017, 2018; module docstring):

    .. math::

        m_1^{(l)} = \prod_{k \le l} \sigma_w^2 \mu_1(q^k), \qquad
        \frac{m_2^{(l)}}{(m_1^{(l)})^2} = 1 + \sum_{k \le l}
        \Bigl(\frac{\mu_2(q^k)}{\mu_1(q^k)^2} - 1 + v_W\Bigr),

    :math:`\mu_j(q) = E[\phi'(\sqrt q z)^{2j}]`, :math:`v_W = -s_1 = 1` (``"gaussian"``) or 0
    (``"orthogonal"``).

    Args:
      sw2, sb2: scalars :math:`\sigma_w^2, \sigma_b^2 \ge 0` (vmap for grids).
      activation: name or ``Activation``.
      depth: number of layers :math:`L`.
      weights: ``"gaussian"`` or ``"orthogonal"``.
      q: the first layer's pre-activation variance :math:`q^1` (layers then follow the q-map);
        ``None`` puts every layer at the fixed point :math:`q^*` (:func:`network_input` with
        ``q = q_star`` realises it).
      order: Gauss-Legendre nodes per panel of the Gaussian rule (see :mod:`gradflow.meanfield`).

    Returns:
      :class:`SpectralMoments` with arrays of shape ``(depth,)``.

    Example:
      Deep linear nets at :math:`\sigma_w^2 = 1`: Gaussian weights spread the spectrum by one per
      layer, orthogonal ones not at all.

      >>> m = gf.spectra.jacobian_moments(1.0, 0.0, "linear", 4, weights="gaussian")
      >>> print(m.variance.round(4))
      [1. 2. 3. 4.]
      >>> m = gf.spectra.jacobian_moments(1.0, 0.0, "linear", 4, weights="orthogonal")
      >>> print(m.variance.round(4))
      [0. 0. 0. 0.]
    """
    act = _activations.get(activation)
    depth = _checks.size("depth", depth)
    spread = _WEIGHT_SPREAD[_check_weights(weights)]
    _checks.nonneg("sw2", sw2, "sigma_w^2 = N Var(W)")
    _checks.nonneg("sb2", sb2, "sigma_b^2 = Var(b)")
    if np.ndim(sw2) or np.ndim(sb2):
        raise ValueError("sw2 and sb2 must be scalars here (vmap over grids)")
    if q is None:
        q1 = _meanfield.q_star(sw2, sb2, act, order=order)
        qs = jnp.broadcast_to(q1, (depth,))
    else:  # the q-map through the layers: one compiled scan (a Python loop took 50 s at 20000)
        qs = _meanfield._q_sequence(q, sw2, sb2, act, depth, order)
    mu1, mu2 = (
        _meanfield.gaussian_expectation(lambda u, k=k: act.grad(u) ** (2 * k), qs, order=order)
        for k in (1, 2)
    )
    m1 = jnp.cumprod(sw2 * mu1)
    v = jnp.cumsum(mu2 / mu1**2 - 1.0 + spread)
    return SpectralMoments(m1, m1**2 * (1.0 + v), m1**2 * v)
