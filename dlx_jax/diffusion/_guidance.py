"""Conditioning as ε-function transforms (book step 10): :func:`conditional` and :func:`guided` close
a labelled model over its labels (and guidance scale) and return the :data:`EpsFn` the samplers call;
label dropping for classifier-free-guidance training (see :mod:`dlx_jax.diffusion`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from dlx_jax._checks import check_class_labels, check_positive_int, is_concrete, require

#: ``eps_fn(x, t) -> eps``: what the samplers call. ``x (n, ...)`` float, ``t (n,)`` int32 in
#: ``1..T`` (1-based); returns the noise prediction shaped like ``x``. The model's parameters,
#: state and conditioning are closed over (:func:`make_eps_fn`, :func:`conditional`, :func:`guided`).
EpsFn = Callable[[Array, Array], Array]

#: ``eps_fn(x, t, labels, label_mask) -> eps``: a model whose conditioning is still open, e.g. the
#: one :func:`make_eps_fn` returns. ``labels (n,)`` int32 or ``None``, ``label_mask (n,)`` float in
#: {0, 1} or ``None`` (0 = no label embedding). Called with ``(x, t)`` only it must be unconditional.
LabeledEpsFn = Callable[[Array, Array, Array | None, Array | None], Array]

#: ``"batch"``: drop the whole batch's labels at once with probability ``p`` (the book's
#: ``if np.random.random() < 0.1: labels = None``); ``"example"``: drop each example's label
#: independently with probability ``p``.
DROP_MODES = ("batch", "example")


def conditional(
    eps_fn: LabeledEpsFn, labels: Int[ArrayLike, " n"], *, num_classes: int | None = None
) -> EpsFn:
    """The conditional model as an :data:`EpsFn`: ``(x, t) -> eps_fn(x, t, labels, 1)``.

    Every example keeps its label (mask of ones in ``x``'s dtype): ``γ = 1`` without the
    unconditional pass of :func:`guided`.

    Args:
        eps_fn: the labelled model (:data:`LabeledEpsFn`, e.g. from :func:`make_eps_fn`).
        labels: ``(n,)`` integer class labels, one per sample (may be traced).
        num_classes: when given, concrete labels must lie in ``0..num_classes - 1``; otherwise
            they must be ``>= 0``.

    Returns:
        ``eps_fn(x, t)`` for the samplers; ``x`` must have ``n`` examples.

    Raises:
        ValueError: labels that are not ``(n,)`` integers or (when concrete) out of range; at
            sampling time, a sample count other than ``n``.
    """
    labels = check_labels(labels, jnp.shape(labels)[0] if jnp.ndim(labels) == 1 else -1, num_classes)

    def conditioned(x: Array, t: Array) -> Array:
        n = x.shape[0]
        _check_label_shape(labels, n)
        return eps_fn(x, t, labels, jnp.ones((n,), x.dtype))

    return conditioned


def guided(
    eps_fn: LabeledEpsFn,
    labels: Int[ArrayLike, " n"],
    gamma: float | Float[ArrayLike, ""],
    *,
    num_classes: int | None = None,
    interval: tuple[int, int] | None = None,
) -> EpsFn:
    """The classifier-free guided model as an :data:`EpsFn`: ``(x, t) -> guided_eps(eps_fn, x, t,
    labels, gamma, interval=interval)``, i.e. ``ε̂_u + γ(ε̂_c - ε̂_u)`` from one ``eps_fn`` call on
    a ``2n`` batch (with ``interval``: ``γ`` only for ``t`` inside it, the conditional model outside).

    Args:
        eps_fn: the labelled model (:data:`LabeledEpsFn`, e.g. from :func:`make_eps_fn`).
        labels: ``(n,)`` integer class labels, one per sample (may be traced).
        gamma: guidance scale ``γ >= 0`` (book: 3; may be traced, checked when concrete).
        num_classes: when given, concrete labels must lie in ``0..num_classes - 1``.
        interval: ``None`` (default, the book: guide at every ``t``) or ``(t_lo, t_hi)`` with
            ``1 <= t_lo <= t_hi`` (static ints): guide only for ``t_lo <= t <= t_hi`` (see
            :func:`guided_eps`).

    Returns:
        ``eps_fn(x, t)`` for the samplers; ``x`` must have ``n`` examples.

    Raises:
        ValueError: ``labels=None``, bad labels (see :func:`conditional`), ``γ < 0`` or a bad
            ``interval``.
    """
    if labels is None:
        raise ValueError(
            "gamma (classifier-free guidance) needs labels to guide towards; pass "
            "diffusion.guided(eps_fn, labels, gamma), or sample eps_fn itself for the unconditional model"
        )
    labels = check_labels(labels, jnp.shape(labels)[0] if jnp.ndim(labels) == 1 else -1, num_classes)
    check_gamma(gamma)
    interval = check_interval(interval)

    def guided_fn(x: Array, t: Array) -> Array:
        return guided_eps(eps_fn, x, t, labels, gamma, interval=interval)

    return guided_fn


def label_drop_mask(
    key: PRNGKeyArray,
    *,
    n: int,
    p: float,
    mode: str = "batch",
    dtype: jnp.dtype = jnp.float32,
) -> Float[Array, " n"]:
    """The label mask for classifier-free-guidance training: 1 keeps a label, 0 drops it.

    ``mode="batch"``: one Bernoulli(``p``) draw decides for the whole batch (all ones or all
    zeros; the book's choice, ``p = 0.1``). ``mode="example"``: ``n`` independent draws, so about
    ``p n`` labels are dropped in every batch.

    Args:
        key: PRNG key.
        n: batch size (static).
        p: drop probability in ``[0, 1]`` (may be traced; checked when concrete).
        mode: ``"batch"`` or ``"example"`` (static).
        dtype: dtype of the mask (the model's float dtype).

    Returns:
        ``(n,)`` mask of zeros and ones in ``dtype``.

    Raises:
        ValueError: unknown ``mode``, ``n < 1``, or ``p`` outside ``[0, 1]`` when concrete.
    """
    check_drop(p, mode)
    check_positive_int("n", n, fix="pass e.g. n=len(x0) (the batch size)", static=True)
    draw_shape = () if mode == "batch" else (int(n),)
    drop = jax.random.bernoulli(key, p, draw_shape)
    return jnp.broadcast_to(jnp.where(drop, 0, 1).astype(dtype), (int(n),))


def guided_eps(
    eps_fn: LabeledEpsFn,
    x: Float[Array, " n *img"],
    t: Int[ArrayLike, "*n"],
    labels: Int[ArrayLike, " n"],
    gamma: float | Float[ArrayLike, ""],
    *,
    num_classes: int | None = None,
    interval: tuple[int, int] | None = None,
) -> Float[Array, " n *img"]:
    r"""Classifier-free guided noise prediction from one forward pass on a ``2n`` batch.

    .. math::  \hat\varepsilon = \hat\varepsilon_u + \gamma_t\,(\hat\varepsilon_c - \hat\varepsilon_u),
        \qquad \gamma_t = \begin{cases} \gamma & t_{lo} \le t \le t_{hi} \\ 1 & \text{otherwise,} \end{cases}

    where ``ε̂_c = eps_fn(x, t, labels, 1)`` is the conditional prediction and
    ``ε̂_u = eps_fn(x, t, labels, 0)`` the unconditional one (mask 0: no label embedding). Both
    come from a single call of ``eps_fn`` on ``concat([x, x])`` with mask ``[1]*n + [0]*n``.
    ``γ = 1`` gives the conditional model, ``γ = 0`` the unconditional one, ``γ > 1`` pushes
    samples towards the label (the book uses ``γ = 3``). Other projects write the same rule as
    ``(1 + w) ε̂_c - w ε̂_u`` with guidance weight ``w = γ - 1``.

    ``interval = (t_lo, t_hi)`` applies the guidance only where ``t_lo <= t <= t_hi`` (per
    example) and uses the conditional prediction ``ε̂_c`` (``γ_t = 1``) elsewhere: guidance in a
    limited interval (Kynkäänniemi et al., 2024). Guiding at high noise levels (large ``t``) is what
    narrows the samples towards a few typical images per class; leaving it out there keeps more of
    the data's variety at nearly the same label fidelity. ``None`` (the default, the book's rule)
    guides at every ``t``, as does an interval covering ``1..T``.

    Args:
        eps_fn: the labelled model, ``eps_fn(x, t, labels, label_mask) -> eps`` (see
            :data:`LabeledEpsFn`).
        x: ``(n, ...)`` noisy inputs ``x_t`` (images ``(n, h, w, c)``).
        t: scalar or ``(n,)`` integer timesteps in ``1..T``; broadcast to ``(n,)`` int32.
        labels: ``(n,)`` integer class labels.
        gamma: guidance scale ``γ >= 0`` (may be traced; checked when concrete).
        num_classes: when given, concrete labels must lie in ``0..num_classes - 1``; otherwise
            they must be ``>= 0``.
        interval: ``None`` (guide at every ``t``) or ``(t_lo, t_hi)``, static ints with
            ``1 <= t_lo <= t_hi``: guide only there.

    Returns:
        ``(n, ...)`` guided noise prediction in ``x``'s dtype.

    Raises:
        ValueError: bad shapes or dtypes, ``γ < 0`` or labels out of range (when concrete), a bad
            ``interval``, or an ``eps_fn`` output whose shape is not ``(2n, ...)``.
    """
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError("x must have a leading batch axis, shape (n, ...), got a scalar; pass x[None]")
    n = x.shape[0]
    labels = check_labels(labels, n, num_classes)
    check_gamma(gamma)
    interval = check_interval(interval)
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer) or t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n):
        raise ValueError(
            f"t must be an integer scalar or have shape (n,) = ({n},), got {t.dtype}{t.shape}; pass "
            "jnp.full((n,), t, jnp.int32)"
        )
    t = jnp.broadcast_to(t.astype(jnp.int32), (n,))
    mask = jnp.concatenate([jnp.ones((n,), x.dtype), jnp.zeros((n,), x.dtype)])
    both = eps_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([labels, labels]), mask)
    both = jnp.asarray(both)
    if both.shape != (2 * n, *x.shape[1:]):
        raise ValueError(
            f"eps_fn must return an array shaped like its input x, (2n, ...) = {(2 * n, *x.shape[1:])}, "
            f"got {both.shape}; the model must return one noise prediction per input pixel"
        )
    both = both.astype(x.dtype)
    eps_c, eps_u = both[:n], both[n:]
    scale = jnp.asarray(gamma, x.dtype)
    if interval is not None:
        inside = (t >= interval[0]) & (t <= interval[1])
        scale = jnp.where(inside, scale, jnp.ones((), x.dtype)).reshape((n,) + (1,) * (x.ndim - 1))
    return eps_u + scale * (eps_c - eps_u)


# --- private helpers ---------------------------------------------------------------------------------


def check_drop(p: float | Array, mode: str) -> None:
    if mode not in DROP_MODES:
        raise ValueError(f"drop mode must be one of {DROP_MODES}, got {mode!r}; pick one of them")
    if is_concrete(p) and not 0.0 <= float(p) <= 1.0:
        raise ValueError(
            f"the label drop probability must lie in [0, 1], got {p!r}; pass e.g. label_drop=0.1 (the book's)"
        )


def check_gamma(gamma: float | Array) -> None:
    if jnp.ndim(gamma) != 0:
        raise ValueError(
            f"gamma must be a scalar guidance scale, got shape {jnp.shape(gamma)}; pass e.g. gamma=3.0"
        )
    if is_concrete(gamma) and not float(gamma) >= 0:
        raise ValueError(
            f"gamma must be >= 0 (0 = unconditional, 1 = conditional), got {gamma!r}; pass e.g. gamma=3.0 "
            "(the book's)"
        )


def check_interval(interval: tuple[int, int] | None) -> tuple[int, int] | None:
    """``None`` or ``(t_lo, t_hi)`` as two Python ints with ``1 <= t_lo <= t_hi``."""
    if interval is None:
        return None
    fix = "pass e.g. interval=(1, 400) (guide for t <= 400) or interval=None (guide at every t)"
    try:
        lo, hi = interval
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (t_lo, t_hi) or None, got {interval!r}; {fix}") from None
    for v in (lo, hi):
        if not isinstance(v, int | np.integer) or isinstance(v, bool):
            raise ValueError(f"interval must hold two ints (static timesteps), got {interval!r}; {fix}")
    if not 1 <= lo <= hi:
        raise ValueError(f"interval must satisfy 1 <= t_lo <= t_hi, got {interval!r}; {fix}")
    return int(lo), int(hi)


def check_labels(labels: ArrayLike, n: int, num_classes: int | None) -> Int[Array, " n"]:
    """Check ``labels`` is ``(n,)`` integer and, when concrete, in range; return it as int32.

    The range check is :func:`dlx_jax._checks.check_class_labels` when ``num_classes`` is given,
    else ``labels >= 0``."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be integers (class indices), got dtype {labels.dtype}; pass "
            "jnp.asarray(labels, jnp.int32)"
        )
    _check_label_shape(labels, n)
    if num_classes is not None:
        if not isinstance(num_classes, int | np.integer) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(
                f"num_classes must be a positive int or None, got {num_classes!r}; pass e.g. num_classes=10"
            )
        check_class_labels(labels, n=n, num_classes=int(num_classes))
        return labels.astype(jnp.int32)

    def message(lv: np.ndarray | None) -> str:
        got = "" if lv is None else f", got values in {lv.min()}..{lv.max()}"
        return (
            f"labels must be >= 0 (class indices){got}; fix the labels, or mark unconditional "
            "examples with label_mask=0 instead of an out-of-range label"
        )

    require(lambda xp, a: xp.all(a >= 0) if xp.size(a) else True, labels, message)
    return labels.astype(jnp.int32)


def _check_label_shape(labels: Array, n: int) -> None:
    if labels.shape != (n,):
        shown = "(n,)" if n < 0 else f"(n,) = ({n},)"
        raise ValueError(
            f"labels must have shape {shown}, one class per example, got {labels.shape}; "
            "e.g. jnp.repeat(jnp.arange(10), n // 10)"
        )
