"""Classifier-free guidance (book step 10): label dropping for training and the guided noise
prediction for sampling (see :mod:`dlx_jax.diffusion`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from dlx_jax._checks import require
from dlx_jax.diffusion._schedule import is_concrete

#: ``eps_fn(x, t, labels, label_mask) -> eps``: the model in eval mode, closing over its
#: parameters and state. ``x (n, ...)``, ``t (n,)`` int32 1-based, ``labels (n,)`` int32 or
#: ``None``, ``label_mask (n,)`` float in {0, 1} or ``None`` (0 = no label embedding).
EpsFn = Callable[[Array, Array, Array | None, Array | None], Array]

#: ``"batch"``: drop the whole batch's labels at once with probability ``p`` (the book's
#: ``if np.random.random() < 0.1: labels = None``); ``"example"``: drop each example's label
#: independently with probability ``p``.
DROP_MODES = ("batch", "example")


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
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive int (the batch size), got {n!r}; pass e.g. n=len(x0)")
    draw_shape = () if mode == "batch" else (int(n),)
    drop = jax.random.bernoulli(key, p, draw_shape)
    return jnp.broadcast_to(jnp.where(drop, 0, 1).astype(dtype), (int(n),))


def guided_eps(
    eps_fn: EpsFn,
    x: Float[Array, " n *img"],
    t: Int[ArrayLike, "*n"],
    labels: Int[ArrayLike, " n"],
    gamma: float | Float[ArrayLike, ""],
    *,
    num_classes: int | None = None,
) -> Float[Array, " n *img"]:
    r"""Classifier-free guided noise prediction from one forward pass on a ``2n`` batch.

    .. math::  \hat\varepsilon = \hat\varepsilon_u + \gamma\,(\hat\varepsilon_c - \hat\varepsilon_u),

    where ``ε̂_c = eps_fn(x, t, labels, 1)`` is the conditional prediction and
    ``ε̂_u = eps_fn(x, t, labels, 0)`` the unconditional one (mask 0: no label embedding). Both
    come from a single call of ``eps_fn`` on ``concat([x, x])`` with mask ``[1]*n + [0]*n``.
    ``γ = 1`` gives the conditional model, ``γ = 0`` the unconditional one, ``γ > 1`` pushes
    samples towards the label (the book uses ``γ = 3``). Other projects write the same rule as
    ``(1 + w) ε̂_c - w ε̂_u`` with guidance weight ``w = γ - 1``.

    Args:
        eps_fn: the model in eval mode, ``eps_fn(x, t, labels, label_mask) -> eps`` (see
            :data:`EpsFn`).
        x: ``(n, ...)`` noisy inputs ``x_t`` (images ``(n, h, w, c)``).
        t: scalar or ``(n,)`` integer timesteps in ``1..T``; broadcast to ``(n,)`` int32.
        labels: ``(n,)`` integer class labels.
        gamma: guidance scale ``γ >= 0`` (may be traced; checked when concrete).
        num_classes: when given, concrete labels must lie in ``0..num_classes - 1``; otherwise
            they must be ``>= 0``.

    Returns:
        ``(n, ...)`` guided noise prediction in ``x``'s dtype.

    Raises:
        ValueError: bad shapes or dtypes, ``γ < 0`` or labels out of range (when concrete), or an
            ``eps_fn`` output whose shape is not ``(2n, ...)``.
    """
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError("x must have a leading batch axis, shape (n, ...), got a scalar; pass x[None]")
    n = x.shape[0]
    labels = check_labels(labels, n, num_classes)
    check_gamma(gamma)
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
    return eps_u + jnp.asarray(gamma, x.dtype) * (eps_c - eps_u)


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


def check_labels(labels: ArrayLike, n: int, num_classes: int | None) -> Int[Array, " n"]:
    """Check ``labels`` is ``(n,)`` integer and, when concrete, in range; return it as int32."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be integers (class indices), got dtype {labels.dtype}; pass "
            "jnp.asarray(labels, jnp.int32)"
        )
    if labels.shape != (n,):
        raise ValueError(
            f"labels must have shape (n,) = ({n},), one class per example, got {labels.shape}; "
            "e.g. jnp.repeat(jnp.arange(10), n // 10)"
        )
    if num_classes is not None and (not isinstance(num_classes, int | np.integer) or num_classes < 1):
        raise ValueError(
            f"num_classes must be a positive int or None, got {num_classes!r}; pass e.g. num_classes=10"
        )
    hi = None if num_classes is None else int(num_classes) - 1
    allowed = ">= 0" if hi is None else f"in 0..{hi}"

    def message(lv: np.ndarray | None) -> str:
        got = "" if lv is None else f", got values in {lv.min()}..{lv.max()}"
        return (
            f"labels must be {allowed} (class indices){got}; fix the labels, or mark unconditional "
            "examples with label_mask=0 instead of an out-of-range label"
        )

    def ok(xp, a):
        if not n:
            return True
        return xp.all(a >= 0) if hi is None else xp.all((a >= 0) & (a <= hi))

    require(ok, labels, message)
    return labels.astype(jnp.int32)
