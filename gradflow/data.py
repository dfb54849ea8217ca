r"""Data: the scikit-learn digits set (offline) and three synthetic tasks.

* :func:`load_digits` -- the 1,797 8x8 handwritten digits that ship with scikit-learn (UCI
  optical recognition of handwritten digits; no download): a deterministic, stratified
  train/test split, pixels scaled to :math:`[0, 1]` or standardised with training-split
  statistics. The default real dataset of the experiments (Nielsen's MNIST setting in miniature).
* :func:`adding_problem` -- the long-range-dependency task of Hochreiter & Schmidhuber (1997,
  experiment 4) used by Pascanu et al. (2013) for recurrent nets.
* :func:`teacher_student` -- regression on the outputs of a random teacher
  :class:`~gradflow.models.MLP`.
* :func:`markov_sequences` -- next-token prediction on sequences of a random deterministic
  order-``k`` Markov chain (a small language-modelling task for Transformers).

:func:`get` dispatches by name (``"digits"``, ``"adding"``, ``"teacher_student"``,
``"markov"``).

Arrays: inputs float32, class labels int32; digits are NumPy arrays (JAX converts them on use), the
synthetic tasks are drawn with an explicit JAX key and are jittable for fixed sizes.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from gradflow import _checks

if TYPE_CHECKING:
    from gradflow.models import MLP

__all__ = [
    "SCALES",
    "Digits",
    "Sequences",
    "TeacherStudent",
    "adding_problem",
    "get",
    "load_digits",
    "markov_sequences",
    "names",
    "teacher_student",
]

#: Pixel scalings accepted by :func:`load_digits`.
SCALES: tuple[str, ...] = ("unit", "standardize")

#: Number of images in the scikit-learn digits set, and their maximum pixel value.
N_DIGITS = 1797
_DIGITS_MAX = 16.0


class Digits(NamedTuple):
    """A train/test split: ``x_*`` float32 ``(n, 64)``, ``y_*`` int32 ``(n,)`` in ``0..9``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class Sequences(NamedTuple):
    """A next-token split: ``x_*`` int32 ``(n, T)`` tokens, ``y_*`` int32 ``(n, T)`` the next
    tokens (``y[:, t] = x[:, t + 1]`` within a sequence), and the chain's transition ``table``
    int32 of shape ``(vocab,) * order``. Accepted as is by :func:`gradflow.training.train_fn`."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    table: np.ndarray

    @property
    def vocab(self) -> int:
        return int(self.table.shape[0])

    @property
    def order(self) -> int:
        return int(self.table.ndim)

    @property
    def loss_floor(self) -> float:
        r"""The least expected next-token cross-entropy (nats per token): the first
        :math:`k - 1` targets of a sequence are uniform, the rest determined by the table, so
        :math:`(k - 1)\ln V / T`."""
        return (self.order - 1) * float(np.log(self.vocab)) / self.x_train.shape[1]


class TeacherStudent(NamedTuple):
    """Inputs ``x`` ``(n, in_dim)``, targets ``y`` ``(n, out)``, and the teacher that made them."""

    x: jax.Array
    y: jax.Array
    teacher: MLP
    teacher_variables: Mapping[str, chex.ArrayTree]


def _int(owner: str, field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {field} must be >= {minimum}, got {value}")
    return int(value)


@functools.cache
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits(
    *,
    scale: str = "unit",
    test_fraction: float = 0.2,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> Digits:
    """The scikit-learn digits set as a deterministic train/test split.

    The split is stratified by class (:func:`sklearn.model_selection.train_test_split` with
    ``random_state=seed``): the same ``seed`` and ``test_fraction`` always give the same arrays.
    ``n_train`` / ``n_test`` keep the first examples of each split (e.g. Nielsen's "first 1000
    training images": ``n_train=1000``).

    Args:
      scale: ``"unit"`` -- pixels (0..16) divided by 16, in :math:`[0, 1]`; ``"standardize"`` --
        each pixel minus its mean, divided by its standard deviation, both computed on the returned
        training examples only (pixels constant on the training set are only centred, in the
        ``"unit"`` scale).
      test_fraction: share of the 1,797 images held out, in ``(0, 1)``.
      n_train, n_test: keep only this many examples of each split (``None``: all).
      seed: split seed.

    Returns:
      :class:`Digits` ``(x_train, y_train, x_test, y_test)``: float32 ``(n, 64)``, int32 ``(n,)``.

    Raises:
      ValueError: unknown ``scale``, ``test_fraction`` outside ``(0, 1)``, ``n_train`` or
        ``n_test`` larger than the split holds.

    Example:
      >>> digits = gf.data.load_digits(n_train=100, n_test=50)
      >>> digits.x_train.shape, digits.y_train.shape, digits.x_test.shape
      ((100, 64), (100,), (50, 64))
    """
    from sklearn.model_selection import train_test_split

    if scale not in SCALES:
        raise ValueError(f"load_digits: unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise TypeError(f"load_digits: test_fraction must be a float, got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"load_digits: test_fraction must be in (0, 1), got {test_fraction}")
    seed = _int("load_digits", "seed", seed, 0)
    x, y = _raw_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=float(test_fraction), random_state=seed, stratify=y, shuffle=True
    )
    for field, n, avail in (("n_train", n_train, len(y_tr)), ("n_test", n_test, len(y_te))):
        if n is None:
            continue
        _int("load_digits", field, n, 1)
        if n > avail:
            raise ValueError(
                f"load_digits: {field}={n} exceeds the {avail} examples available in that split "
                f"({N_DIGITS} digits, test_fraction={test_fraction}); lower {field} or change "
                "test_fraction"
            )
    if n_train is not None:
        x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    if n_test is not None:
        x_te, y_te = x_te[:n_test], y_te[:n_test]
    x_tr, x_te = x_tr / _DIGITS_MAX, x_te / _DIGITS_MAX
    if scale == "standardize":
        mean = x_tr.mean(axis=0, dtype=np.float64)
        std = x_tr.std(axis=0, dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return Digits(
        np.ascontiguousarray(x_tr, dtype=np.float32),
        np.ascontiguousarray(y_tr, dtype=np.int32),
        np.ascontiguousarray(x_te, dtype=np.float32),
        np.ascontiguousarray(y_te, dtype=np.int32),
    )


def adding_problem(
    key: jax.Array, n: int, length: int, *, dtype: DTypeLike | None = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    r"""The adding problem: sum the two marked numbers of a length-``T`` sequence.

    Each sequence has two channels: values :math:`v_t \sim U[0, 1]` and markers :math:`m_t \in
    \{0, 1\}` with exactly two ones, one at a uniform position in the first half
    (:math:`t < \lfloor T/2 \rfloor`) and one in the second half (the variant of Le et al. 2015 and
    Arjovsky et al. 2016 of Hochreiter & Schmidhuber 1997, experiment 4). The target is
    :math:`y = \sum_t m_t v_t \in [0, 2]`; predicting the constant 1 gives mean squared error
    :math:`1/6`, the baseline a model must beat. The first marker lies at least :math:`T/2` steps
    before the end, so the gradient must travel that far back in time.

    Args:
      key: a typed PRNG key, ``jax.random.key(seed)`` (raw ``jax.random.PRNGKey`` data is
        accepted too).
      n: number of sequences.
      length: sequence length :math:`T \ge 2`.
      dtype: float dtype of the arrays.

    Returns:
      ``(x, y)``: ``x`` ``(n, T, 2)`` (channel 0 values, channel 1 markers), ``y`` ``(n, 1)``.
    """
    key = _checks.prng_key("key", key)
    n = _int("adding_problem", "n", n, 1)
    length = _int("adding_problem", "length", length, 2)
    return _adding(key, n, length, _checks.float_dtype("dtype", dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _adding(
    key: jax.Array, n: int, length: int, dtype: jnp.dtype | None
) -> tuple[jax.Array, jax.Array]:
    k_val, k_first, k_second = jax.random.split(key, 3)
    values = jax.random.uniform(k_val, (n, length), dtype=dtype)
    half = length // 2
    first = jax.random.randint(k_first, (n,), 0, half)
    second = jax.random.randint(k_second, (n,), half, length)
    t = jnp.arange(length)
    markers = ((t == first[:, None]) | (t == second[:, None])).astype(dtype)
    x = jnp.stack([values, markers], axis=-1)
    y = jnp.sum(values * markers, axis=1, keepdims=True)
    return x, y


def teacher_student(
    key: jax.Array,
    n: int,
    *,
    in_dim: int = 16,
    widths: Sequence[int] = (32,),
    out: int = 1,
    activation: str = "tanh",
    kernel_init: str | Callable = "xavier_normal",
    bias_init: str | Callable = "zeros",
    noise_std: float = 0.0,
) -> TeacherStudent:
    r"""Teacher-student regression: targets from a random teacher network.

    :math:`x \sim N(0, I_{d})`, :math:`y = f_\theta(x) + \varepsilon`,
    :math:`\varepsilon \sim N(0, \sigma^2 I)`, where :math:`f_\theta` is a
    :class:`gradflow.models.MLP` with the given ``widths``, ``activation`` and initializers and
    parameters drawn once from ``key``. A student of the same architecture can reach zero
    training loss when ``noise_std == 0``, so failures to train are failures of optimisation (the
    gradients), not of capacity.

    Args:
      key: a typed PRNG key, ``jax.random.key(seed)``, split for inputs, teacher and noise (raw
        ``jax.random.PRNGKey`` data is accepted too).
      n: number of examples.
      in_dim: input dimension :math:`d`.
      widths, out, activation, kernel_init, bias_init: the teacher :class:`~gradflow.models.MLP`.
      noise_std: :math:`\sigma \ge 0`.

    Returns:
      :class:`TeacherStudent` ``(x, y, teacher, teacher_variables)``, ``x`` ``(n, in_dim)``,
      ``y`` ``(n, out)``, float32.
    """
    from gradflow import models

    n = _int("teacher_student", "n", n, 1)
    in_dim = _int("teacher_student", "in_dim", in_dim, 1)
    if not (isinstance(noise_std, numbers.Real) and np.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"teacher_student: noise_std must be a finite float >= 0, got {noise_std}")
    teacher = models.MLP(
        widths=tuple(widths) if isinstance(widths, Sequence) else widths,
        out=out,
        activation=activation,
        kernel_init=kernel_init,
        bias_init=bias_init,
    )
    k_x, k_teacher, k_noise = jax.random.split(_checks.prng_key("key", key), 3)
    x = jax.random.normal(k_x, (n, in_dim), dtype=jnp.float32)
    variables = teacher.init(k_teacher, x)
    y = teacher.apply(variables, x)
    if noise_std > 0:
        y = y + noise_std * jax.random.normal(k_noise, y.shape, dtype=y.dtype)
    return TeacherStudent(x, y, teacher, variables)


def markov_sequences(
    key: jax.Array,
    n_train: int,
    n_test: int,
    length: int,
    *,
    vocab: int = 16,
    order: int = 2,
) -> Sequences:
    r"""Next-token prediction on a random deterministic order-:math:`k` Markov chain.

    A transition table :math:`\pi: \{0..V-1\}^k \to \{0..V-1\}` is drawn uniformly (one token
    per context) from ``key``; each sequence starts with :math:`k` uniform tokens and continues
    :math:`s_t = \pi(s_{t-k}, \dots, s_{t-1})`. Inputs are :math:`s_0 .. s_{T-1}`, targets
    :math:`s_1 .. s_T`. Predicting :math:`s_{t+1}` needs the previous :math:`k` tokens, so a model
    must attend to earlier positions (for :math:`k \ge 2`); every target after the first
    :math:`k - 1` is determined, so the loss can fall to :attr:`Sequences.loss_floor`
    (:math:`(k - 1)\ln V / T` nats per token) from :math:`\ln V` for a uniform guess. A small,
    learnable language-modelling task for Transformers at CPU scale (the role of the translation
    data of Xiong et al. 2020, https://arxiv.org/abs/2002.04745).

    Train and test sequences come from one table and independent start tokens, drawn from
    ``key`` (split in three: table, train, test), so the same key always gives the same arrays.

    Args:
      key: a typed PRNG key, ``jax.random.key(seed)`` (raw ``jax.random.PRNGKey`` data is
        accepted too).
      n_train, n_test: number of sequences in each split (``n_test`` may be 0).
      length: tokens per input sequence :math:`T \ge k`.
      vocab: vocabulary size :math:`V \ge 2`.
      order: :math:`k \ge 1`; the table has :math:`V^k` entries (at most :math:`2^{20}`).

    Returns:
      :class:`Sequences` ``(x_train, y_train, x_test, y_test, table)``, NumPy int32.

    Raises:
      TypeError / ValueError: a size that is not an int or is below its minimum, a table larger
        than :math:`2^{20}` entries, or a traced ``key`` (the arrays are drawn eagerly; a
        concrete key works inside a traced function too).
    """
    key = _checks.prng_key("key", key)
    n_train = _int("markov_sequences", "n_train", n_train, 1)
    n_test = _int("markov_sequences", "n_test", n_test, 0)
    vocab = _int("markov_sequences", "vocab", vocab, 2)
    order = _int("markov_sequences", "order", order, 1)
    length = _int("markov_sequences", "length", length, order)
    if vocab**order > 2**20:
        raise ValueError(
            f"markov_sequences: the table has vocab**order = {vocab}**{order} entries, more "
            f"than 2**20; lower vocab or order"
        )
    if isinstance(key, jax.core.Tracer):
        raise TypeError(
            "markov_sequences: key is traced (inside jit, vmap or eval_shape); the sequences are "
            "NumPy arrays drawn eagerly, so pass a concrete key made outside the traced function"
        )
    # NumPy arrays out: the draws run eagerly even when called while JAX traces a function
    with jax.ensure_compile_time_eval():
        k_table, k_train, k_test = jax.random.split(key, 3)
        table = np.asarray(jax.random.randint(k_table, (vocab,) * order, 0, vocab), np.int32)
        starts = [np.asarray(jax.random.randint(k, (n, order), 0, vocab), np.int32)
                  for k, n in ((k_train, n_train), (k_test, n_test))]  # fmt: skip

    def draw(start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = np.zeros((len(start), length + 1), np.int32)
        s[:, :order] = start
        for t in range(order, length + 1):
            s[:, t] = table[tuple(s[:, t - order + i] for i in range(order))]
        return s[:, :-1].copy(), s[:, 1:].copy()

    (x_tr, y_tr), (x_te, y_te) = draw(starts[0]), draw(starts[1])
    for a in (table, x_tr, y_tr, x_te, y_te):
        a.setflags(write=False)
    return Sequences(x_tr, y_tr, x_te, y_te, table)


_DATASETS: dict[str, Callable[..., Any]] = {
    "digits": load_digits,
    "adding": adding_problem,
    "teacher_student": teacher_student,
    "markov": markov_sequences,
}


def names() -> tuple[str, ...]:
    """Names :func:`get` accepts."""
    return tuple(_DATASETS)


def get(name: str, *args: Any, **kwargs: Any) -> Any:
    """Dispatch by name: ``get("digits", scale=...)``, ``get("adding", key, n, length)``,
    ``get("teacher_student", key, n, ...)``, ``get("markov", key, n_train, n_test, length)``.

    Raises:
      ValueError: unknown name (the message lists :func:`names`).
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(names())}")
    return _DATASETS[name](*args, **kwargs)
