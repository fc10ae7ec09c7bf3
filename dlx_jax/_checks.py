"""Argument checks shared by several library modules (one place, one wording of each error).

Shape and setting checks (:func:`check_positive_int` for every count, size and step option,
:func:`check_sizes`, :func:`check_num_samples`, :func:`check_shape`, :func:`check_nonempty` for a
batch that is averaged over, :func:`check_last_axis`, :func:`check_float`, :func:`check_broadcast`)
read only static information and so work at trace time inside ``jax.jit``. Every check raises
``ValueError`` naming the problem and the fix.

**Value checks** (:func:`check_finite`, :func:`check_unit_interval`, :func:`check_class_labels`,
:func:`require`) need numbers. They run in two modes:

* on a concrete array (eager calls, constants closed over under ``jit``) they check the values on
  the host and raise ``ValueError`` at once;
* on a tracer (under ``jit``/``vmap``/``grad``) values do not exist yet, so they only record a
  :func:`jax.experimental.checkify.debug_check`. That is a no-op (XLA removes the predicate:
  jitted hot paths are not slowed down) unless the function is run through :func:`checked`, the
  opt-in checked mode, which turns a failed check inside compiled code into one error.

:func:`validate_images` checks a whole image batch (shape, dtype, range, NaN) and needs a concrete
array: call it before jitting, as the experiments do.

Checked mode, e.g. for an out-of-range label inside a jitted loss::

    from dlx_jax import checked, cnn
    loss = checked(lambda p, x, y, m: cnn.loss(p, x, y, dropout_mask=m))   # jitted inside
    loss(params, x, y, mask)   # ValueError: labels y must lie in 0..9 ... (`check` failed)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = [
    "check_broadcast",
    "check_class_labels",
    "check_finite",
    "check_flat_pixels",
    "check_float",
    "check_last_axis",
    "check_nonempty",
    "check_num_samples",
    "check_positive_int",
    "check_shape",
    "check_sizes",
    "check_timesteps",
    "check_unit_interval",
    "checked",
    "is_concrete",
    "require",
    "validate_images",
]

PIXEL_FIX = "scale pixels to [0, 1] (divide 0-255 images by 255, e.g. with dlx_jax.data.to_float_images)"


def is_concrete(*values: object) -> bool:
    """True when no argument is a JAX tracer, i.e. its numbers can be inspected now."""
    return not any(isinstance(v, jax.core.Tracer) for leaf in values for v in jax.tree_util.tree_leaves(leaf))


def _escape(message: str) -> str:
    # checkify formats its messages with str.format: keep literal braces literal
    return message.replace("{", "{{").replace("}", "}}")


def require(ok: Callable[[Any, Any], Any], x: Any, message: str | Callable[[np.ndarray], str]) -> None:
    """Check ``ok(xp, x)`` (``xp`` is ``numpy`` or ``jax.numpy``) on a concrete or traced ``x``.

    Concrete ``x``: evaluate with numpy and raise ``ValueError(message)`` when false (``message``
    may be a function of the numpy array, to quote the offending values). Traced ``x``: record a
    ``checkify.debug_check`` that only :func:`checked` turns into an error (a no-op otherwise).
    """
    if is_concrete(x):
        arr = np.asarray(x)
        if not bool(ok(np, arr)):
            raise ValueError(message(arr) if callable(message) else message)
    else:
        text = message(None) if callable(message) else message
        checkify.debug_check(jnp.all(ok(jnp, x)), _escape(text))


def check_finite(name: str, x: Any, fix: str = "remove or impute the NaN/inf entries") -> None:
    """``x`` must hold no NaN or ±inf (see :func:`require` for concrete vs traced ``x``)."""
    require(
        lambda xp, a: xp.all(xp.isfinite(a)) if xp.size(a) else True,
        x,
        f"{name} contains NaN or infinite values; {fix}",
    )


def check_unit_interval(name: str, x: Any, fix: str = PIXEL_FIX) -> None:
    """Pixel values must lie in ``[0, 1]`` and be finite (e.g. not 0-255 images)."""

    def message(arr: np.ndarray | None) -> str:
        if arr is None:
            return f"{name} has values outside [0, 1] (or NaN); {fix}"
        if not np.isfinite(arr).all():
            return f"{name} contains NaN or infinite values; expected pixels in [0, 1]; {fix}"
        return f"{name} has values in [{float(arr.min()):g}, {float(arr.max()):g}], outside [0, 1]; {fix}"

    require(lambda xp, a: xp.all((a >= 0) & (a <= 1)) if xp.size(a) else True, x, message)


def check_class_labels(
    labels: Any,
    *,
    n: int | None,
    num_classes: int,
    name: str = "labels",
    per: str = "example",
    n_symbol: str | None = None,
    note: str = " (class indices)",
    fix: str = "fix or drop the out-of-range labels (e.g. jnp.clip or a mask)",
    traced: bool = True,
) -> None:
    """Integer class labels of shape ``(n,)`` with values in ``0..num_classes - 1``.

    Shape and dtype are checked statically (also under ``jit``); values when concrete, or in
    :func:`checked` mode. Under plain ``jit`` an out-of-range label cannot be detected: it gives
    NaN (``>= num_classes``) or silently picks another class (negative, wrapped around).

    Args:
        labels: the labels.
        n: the number of examples they label, or ``None`` to skip the shape check.
        num_classes: the number of classes ``k`` (values must lie in ``0..k-1``).
        name: what to call the labels in messages (e.g. ``"labels y"``).
        per: what one label belongs to, for the shape message (``"example"``, ``"image"``).
        n_symbol: the count's symbol in the caller's docs, e.g. ``"n"``: the shape message then
            reads ``(n,) = (2,)``.
        note: said after the range in the range message.
        fix: the fix the range message suggests.
        traced: also record a :func:`checked`-mode check for traced labels; ``False`` where an
            out-of-range placeholder is allowed under ``jit`` (e.g. masked-out labels).
    """
    if n is not None and jnp.shape(labels) != (n,):
        shape = f"({n},)" if n_symbol is None else f"({n_symbol},) = ({n},)"
        raise ValueError(
            f"{name} must have shape {shape}, one label per {per}, got {jnp.shape(labels)}; "
            f"pass as many labels as {per}s"
        )
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(
            f"{name} must be integer class indices in 0..{num_classes - 1}, got dtype "
            f"{jnp.result_type(labels)}; pass integers, e.g. jnp.asarray({name}, jnp.int32)"
        )
    if not traced and not is_concrete(labels):
        return

    def message(arr: np.ndarray | None) -> str:
        got = "" if arr is None else f", got values in {int(arr.min())}..{int(arr.max())}"
        return f"{name} must lie in 0..{num_classes - 1}{note}{got}; {fix}"

    require(lambda xp, a: xp.all((a >= 0) & (a < num_classes)) if xp.size(a) else True, labels, message)


def check_broadcast(**shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The named shapes must broadcast together; returns the broadcast shape."""
    try:
        return jnp.broadcast_shapes(*shapes.values())
    except ValueError:
        listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
        raise ValueError(
            f"shapes do not broadcast: {listed}; pass arrays of the same shape (or add size-1 axes)"
        ) from None


def checked(
    fn: Callable[..., Any],
    *,
    jit: bool = True,
    static_argnames: str | Iterable[str] | None = None,
    nan_checks: bool = False,
) -> Callable[..., Any]:
    """Opt-in checked mode: ``fn`` with its value checks active inside compiled code.

    Under plain ``jax.jit`` the library cannot look at values (an out-of-range label gives NaN, a
    non-positive-definite covariance gives NaN, a 0-255 image gives a huge loss). Wrapping the
    *undecorated* function with ``checked`` runs it through :func:`jax.experimental.checkify`, which
    activates those checks as part of the compiled program; the wrapper raises one ``ValueError``
    (``checkify.JaxRuntimeError``) naming the problem and the fix after the call returns, or
    returns ``fn``'s result.

    Args:
        fn: the function to check (undecorated: wrap it, then let ``checked`` jit it; a function
            that was already ``jax.jit``-ed may reuse a trace made without the checks).
        jit: (default ``True``) compile the checked function with ``jax.jit``.
        static_argnames: passed to ``jax.jit`` (e.g. ``"num_samples"``).
        nan_checks: also fail on the first primitive that produces a NaN
            (``checkify.nan_checks``), for finding where a NaN comes from.

    Returns:
        A function with ``fn``'s arguments that returns ``fn``'s result or raises ``ValueError``.
        It costs an extra output per check and so is meant for debugging, not the hot loop.

    Limitation: checkify cannot transform a ``while_loop`` inside ``vmap`` (e.g.
    ``mixture.fit_restarts``); such functions raise a ``ValueError`` saying so. Check them eagerly.
    """
    errors = checkify.user_checks | (checkify.nan_checks if nan_checks else frozenset())
    checkified = checkify.checkify(fn, errors=errors)
    run = jax.jit(checkified, static_argnames=static_argnames) if jit else checkified

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        err, out = run(*args, **kwargs)
        err.throw()
        return out

    return wrapper


def check_positive_int(name: str, value: Any, *, fix: str, minimum: int = 1, static: bool = False) -> None:
    """``value`` must be an integer (Python or numpy, not ``bool``) ``>= minimum``.

    The one check behind every count, size and step option (``batch_size``, ``n_init``, ``n``, ...).

    Args:
        name: the option's name as the caller spells it.
        value: the value to check.
        fix: what to do instead, e.g. ``"pass e.g. n_init=10"``.
        minimum: the smallest allowed value (1; 0 for a count that may be zero).
        static: the value is a static (Python) argument under ``jit``; the message says so.

    Raises:
        ValueError: ``"{name} must be an int >= {minimum} (static), got {value!r}; {fix}"`` (or
            "an integer" when not ``static``, "a non-negative int" for ``minimum=0``).
    """
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= minimum:
        return
    kind = "int" if static else "integer"
    what = f"a non-negative {kind}" if minimum == 0 else f"an {kind} >= {minimum}"
    raise ValueError(f"{name} must be {what}{' (static)' if static else ''}, got {value!r}; {fix}")


def check_shape(name: str, shape: Any, *, fix: str) -> tuple[int, ...]:
    """A static array shape: a tuple (or list) of integers ``>= 0``; returns it as a tuple.

    Catches ``shape=(-1,)`` or ``shape=5`` before JAX fails on it with an internal error.
    """
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or any(not isinstance(d, int | np.integer) or isinstance(d, bool) or d < 0 for d in dims):
        raise ValueError(f"{name} must be a tuple of non-negative ints (static), got {shape!r}; {fix}")
    return dims


def check_nonempty(name: str, count: int, *, what: str = "examples", fix: str | None = None) -> None:
    """A batch that is averaged over must hold at least one example (``count`` is static)."""
    if count < 1:
        raise ValueError(
            f"{name} is an empty batch (0 {what}), and a mean over no {what} is undefined (0/0); "
            f"{fix or f'pass at least one of the {what}'}"
        )


def check_sizes(**sizes: int) -> None:
    """Every keyword is a layer size that must be an integer >= 1 (e.g. ``latent_dim=20``)."""
    for name, value in sizes.items():
        check_positive_int(name, value, fix=f"pass e.g. {name}=20")


def check_num_samples(num_samples: int) -> None:
    """``num_samples`` (a static sample count) must be an integer >= 1."""
    check_positive_int("num_samples", num_samples, fix="pass e.g. num_samples=1")


def check_last_axis(x, width: int) -> None:
    """``x`` must have a last axis of ``width`` features (e.g. 784 flattened pixels)."""
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != width:
        raise ValueError(
            f"x has shape {tuple(jnp.shape(x))} but the model expects (..., {width}); "
            f"flatten images to (n, {width}) with x.reshape(len(x), -1)"
        )


def check_flat_pixels(x, width: int, name: str = "x") -> None:
    """Flattened float images ``(..., width)`` with pixels in ``[0, 1]`` (values: concrete or checked)."""
    check_last_axis(x, width)
    check_float(name, x)
    check_unit_interval(name, x)


def check_float(name: str, x) -> None:
    """``x`` must have a floating-point dtype."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(
            f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}; cast it with "
            ".astype(jnp.float32)"
        )


def validate_images(x, *, input_dim: int = 784, name: str = "images", flatten: bool = True) -> np.ndarray:
    """Check a concrete batch of one-channel images and return it as float32.

    Accepts ``(n, d)``, ``(n, H, W)`` or ``(n, H, W, 1)`` with ``H·W = d``, values in ``[0, 1]``
    (uint8 0–255 images are rejected: convert with ``dlx_jax.data.to_float_images``). This is a
    value check and so runs on concrete arrays only (call it before jitting).

    Args:
        x: the images.
        input_dim: ``d``, pixels per image (784 for 28×28).
        name: what to call the images in error messages.
        flatten: return ``(n, d)`` (default); ``False`` keeps images ``(n, H, W, 1)`` (needs image
            input, not ``(n, d)``).

    Raises:
        ValueError: wrong shape, an empty batch, NaN/inf, or values outside ``[0, 1]``.
    """
    if isinstance(x, jax.core.Tracer):
        raise ValueError(
            f"validate_images needs a concrete array, got a tracer for {name}; call it outside jit"
        )
    arr = np.asarray(x)
    shape = arr.shape
    if arr.ndim == 4 and shape[-1] == 1:
        arr = arr[..., 0]
    image_shape = arr.shape[1:] if arr.ndim == 3 else None
    if arr.ndim == 3:
        arr = arr.reshape(len(arr), -1)
    if arr.ndim != 2 or arr.shape[1] != input_dim:
        raise ValueError(
            f"{name} have shape {shape}; expected (n, {input_dim}), (n, H, W) or (n, H, W, 1) with "
            f"H*W = {input_dim} (e.g. 28x28 MNIST); reshape or resize the images"
        )
    if not flatten and image_shape is None:
        raise ValueError(f"{name} have shape {shape}; pass images (n, H, W) or (n, H, W, 1) or flatten=True")
    if len(arr) == 0:
        raise ValueError(f"{name} is empty; pass at least one image")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"{name} have dtype {arr.dtype}; expected floats in [0, 1] (uint8 pixels 0-255: divide by 255, "
            "e.g. with dlx_jax.data.to_float_images)"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or infinite values; clean the data (drop or impute them)")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} have values in [{lo:g}, {hi:g}]; expected pixels in [0, 1] (divide 0-255 images by 255)"
        )
    arr = arr.astype(np.float32, copy=False)
    return arr if flatten else arr.reshape(len(arr), *image_shape, 1)


# --- timesteps (diffusion) -----------------------------------------------------------------------


def check_timesteps(
    t: Any,
    num_steps: int,
    n: int,
    *,
    low: int = 1,
    high: int | None = None,
    name: str = "t",
) -> jax.Array:
    """Diffusion timesteps: an integer scalar or ``(n,)`` and, when concrete (or in :func:`checked`
    mode), in ``low..high`` (``high`` defaults to ``T = num_steps``); returned as int32.

    The book's ``t`` is 1-based (see :mod:`dlx_jax.diffusion`); ``low=0`` admits "no noise".
    """
    high = num_steps if high is None else high
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(
            f"{name} must hold integer timesteps in {low}..{high}, got dtype {t.dtype}; "
            f"pass e.g. jnp.asarray({name}, jnp.int32)"
        )
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n):
        raise ValueError(
            f"{name} must be a scalar or have shape (n,) = ({n},) (one timestep per example), got "
            f"{t.shape}; pass one timestep per example"
        )

    def message(tv: np.ndarray | None) -> str:
        got = "" if tv is None else f", got values in {tv.min()}..{tv.max()}"
        return (
            f"{name} must lie in {low}..{high} (the book's 1-based timesteps; T = {num_steps}){got}; "
            "draw timesteps with sample_timesteps(key, schedule, n=n) or clip them"
        )

    require(lambda xp, a: xp.all((a >= low) & (a <= high)) if xp.size(a) else True, t, message)
    return t.astype(jnp.int32)
