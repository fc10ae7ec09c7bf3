"""The forward (noising) process and the training loss (see :mod:`dlx_jax.diffusion`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from dlx_jax._checks import check_positive_int, check_timesteps
from dlx_jax._random import standard_normal
from dlx_jax.diffusion._guidance import check_drop, check_labels, label_drop_mask
from dlx_jax.diffusion._schedule import Schedule, check_schedule, coef, float_x

#: ``apply_fn(params, model_state, x, t, labels, label_mask, *, train) -> (eps_hat, new_state)``:
#: the network, e.g. the UNet of :mod:`dlx_jax.unet`. ``x (n, h, w, c)`` float, ``t (n,)`` int32
#: 1-based, ``labels (n,)`` int32 or ``None``, ``label_mask (n,)`` float in {0, 1} or ``None``
#: (0 = no label embedding), ``train`` a static bool.
ApplyFn = Callable[..., tuple[Array, Any]]

#: ``loss_fn(key, params, model_state, batch) -> (loss, (new_model_state, metrics))``, the
#: stateful loss that :mod:`dlx_jax.training` differentiates with respect to ``params``.
LossFn = Callable[[PRNGKeyArray, Any, Any, Any], tuple[Array, tuple[Any, dict[str, Array]]]]


def q_sample_from_noise(
    schedule: Schedule,
    x0: Float[ArrayLike, " n *img"],
    t: Int[ArrayLike, "*n"],
    eps: Float[ArrayLike, " n *img"],
) -> Float[Array, " n *img"]:
    """Noise ``x0`` to timestep ``t`` with given noise: ``x_t = √ᾱ_t x0 + √(1 - ᾱ_t) ε``.

    This is the closed form of ``t`` steps of ``x_s = √α_s x_{s-1} + √β_s ε_s``.

    Args:
        schedule: the :class:`Schedule`.
        x0: ``(n, ...)`` clean data (images ``(n, h, w, c)``), floating.
        t: scalar or ``(n,)`` integer timesteps in ``0..T``, one per example, broadcast over the
            other axes of ``x0`` (``t = 0`` returns ``x0``: no noise). Checked when concrete;
            under ``jit`` an out-of-range ``t`` gives NaN.
        eps: noise shaped like ``x0``.

    Returns:
        ``x_t`` shaped like ``x0``, in ``x0``'s dtype (the schedule is cast to it).

    Raises:
        ValueError: bad shapes or dtypes, or (concrete) ``t`` outside ``0..T``.
    """
    num_steps = check_schedule(schedule)
    x0 = float_x(x0, "x0")
    eps = float_x(eps, "eps")
    if eps.shape != x0.shape:
        raise ValueError(f"eps must have the shape of x0, {x0.shape}, got {eps.shape}; draw it like x0")
    t = check_timesteps(t, num_steps, x0.shape[0], low=0)
    sqrt_ab = jnp.sqrt(coef(schedule.alpha_bars, t, x0))
    sqrt_omab = jnp.sqrt(coef(schedule.one_minus_alpha_bars, t, x0))
    return sqrt_ab * x0 + sqrt_omab * eps.astype(x0.dtype)


def q_sample(
    key: PRNGKeyArray,
    schedule: Schedule,
    x0: Float[ArrayLike, " n *img"],
    t: Int[ArrayLike, "*n"],
) -> tuple[Float[Array, " n *img"], Float[Array, " n *img"]]:
    """Draw ``x_t ~ q(x_t | x0) = N(√ᾱ_t x0, (1 - ᾱ_t) I)``; also return the noise used.

    Args:
        key: PRNG key for ``ε ~ N(0, I)``.
        schedule: the :class:`Schedule`.
        x0: ``(n, ...)`` clean data, floating.
        t: scalar or ``(n,)`` integer timesteps in ``0..T`` (see :func:`q_sample_from_noise`).

    Returns:
        ``(x_t, eps)``, both shaped like ``x0`` and in its dtype; ``eps`` is
        ``jax.random.normal(key, (x0.size,), x0.dtype).reshape(x0.shape)``.

    Raises:
        ValueError: as :func:`q_sample_from_noise`.
    """
    x0 = float_x(x0, "x0")
    eps = standard_normal(key, x0.shape, x0.dtype)
    return q_sample_from_noise(schedule, x0, t, eps), eps


def sample_timesteps(key: PRNGKeyArray, schedule: Schedule, *, n: int) -> Int[Array, " n"]:
    """``n`` timesteps drawn uniformly from ``{1, ..., T}`` (int32), as the loss uses.

    Args:
        key: PRNG key.
        schedule: the :class:`Schedule` (only ``T`` is read).
        n: how many (static).

    Returns:
        ``(n,)`` int32 timesteps.
    """
    num_steps = check_schedule(schedule)
    check_positive_int("n", n, fix="pass e.g. n=len(x0) (the batch size)", static=True)
    return jax.random.randint(key, (int(n),), 1, num_steps + 1, dtype=jnp.int32)


def make_loss(
    apply_fn: ApplyFn,
    schedule: Schedule,
    *,
    conditional: bool = False,
    label_drop: float = 0.0,
    drop_mode: str = "batch",
    num_classes: int | None = None,
) -> LossFn:
    r"""The book's noise-prediction loss as a stateful ``loss_fn`` for :mod:`dlx_jax.training`.

    For a batch ``x0`` of ``n`` examples, with ``t_i ~ Uniform{1..T}`` and ``ε ~ N(0, I)``,

    .. math::  L = \frac{1}{n D} \sum_{i} \lVert \varepsilon_i
               - \hat\varepsilon_\theta(\sqrt{\bar\alpha_{t_i}} x_{0,i}
               + \sqrt{1 - \bar\alpha_{t_i}} \varepsilon_i, t_i) \rVert^2,

    the mean squared error over all ``D`` pixels and the batch (PyTorch's ``F.mse_loss``).

    With ``conditional=True`` the batch is ``(x0, labels)`` and the model also gets the labels
    and a label mask from :func:`label_drop_mask` (``label_drop`` and ``drop_mode``): mask 0 means
    "no label", so one network learns both ``ε̂_c`` and ``ε̂_u`` for classifier-free guidance
    (book: ``label_drop=0.1``, whole batches). Without it the batch is ``x0`` or ``(x0, labels)``
    (labels ignored) and the model gets ``labels=None, label_mask=None``.

    The returned ``loss_fn(key, params, model_state, batch)`` splits ``key`` into
    ``key_t, key_eps, key_drop = jax.random.split(key, 3)`` and calls
    ``apply_fn(params, model_state, x_t, t, labels, label_mask, train=True)``. It returns
    ``(loss, (new_model_state, metrics))`` with ``metrics = {"mse": loss}`` plus, when
    conditional, ``"label_drop_fraction"`` (the fraction of the batch whose labels were dropped).

    Args:
        apply_fn: the network (see :data:`ApplyFn`).
        schedule: the :class:`Schedule` (the same object the samplers get).
        conditional: whether the batch carries labels the model is conditioned on.
        label_drop: probability of dropping labels, in ``[0, 1]``; needs ``conditional``.
        drop_mode: ``"batch"`` (all labels of a batch at once) or ``"example"`` (each label
            independently); see :data:`DROP_MODES`.
        num_classes: when given, concrete labels are checked to lie in ``0..num_classes - 1``.

    Returns:
        The undecorated ``loss_fn`` (the caller jits the training step).

    Raises:
        ValueError: at construction, a bad schedule, ``label_drop`` outside ``[0, 1]``, an unknown
            ``drop_mode``, or ``label_drop > 0`` without ``conditional``; at trace time, a batch
            without labels when ``conditional``, non-floating or misshapen images, or a model
            output not shaped like its input.
    """
    check_schedule(schedule)
    _check_loss_options(conditional, label_drop, drop_mode)

    def loss_fn(
        key: PRNGKeyArray, params: Any, model_state: Any, batch: Any
    ) -> tuple[Float[Array, ""], tuple[Any, dict[str, Array]]]:
        x0, labels = _split_batch(batch, conditional)
        x0 = float_x(x0, "x0")
        n = x0.shape[0]
        key_t, key_eps, key_drop = jax.random.split(key, 3)
        t = sample_timesteps(key_t, schedule, n=n)
        x_t, eps = q_sample(key_eps, schedule, x0, t)
        if conditional:
            labels = check_labels(labels, n, num_classes)
            mask = label_drop_mask(key_drop, n=n, p=label_drop, mode=drop_mode, dtype=x0.dtype)
        else:
            labels = mask = None
        eps_hat, new_state = apply_fn(params, model_state, x_t, t, labels, mask, train=True)
        mse = jnp.mean(jnp.square(_check_eps_hat(eps_hat, x0) - eps))
        metrics = {"mse": mse}
        if conditional:
            # clipped: jax 0.12 computes mean([1, 1, 1]) as 3 * (1/3) = 1 + 3e-8 in float32
            metrics["label_drop_fraction"] = jnp.clip(1 - jnp.mean(mask), 0, 1)
        return mse, (new_state, metrics)

    return loss_fn


# --- private helpers ---------------------------------------------------------------------------------


def _split_batch(batch: Any, conditional: bool) -> tuple[Any, Any]:
    if isinstance(batch, tuple | list):
        if len(batch) != 2:
            raise ValueError(
                f"batch must be x0 or (x0, labels), got a sequence of {len(batch)} items; pass (x0, labels)"
            )
        return batch[0], batch[1]
    if conditional:
        raise ValueError(
            "a conditional loss needs batch = (x0, labels), got a single array; pass the labels or "
            "build the loss with conditional=False"
        )
    return batch, None


def _check_loss_options(conditional: bool, label_drop: float, drop_mode: str) -> None:
    check_drop(label_drop, drop_mode)
    if not conditional and label_drop > 0:
        raise ValueError(
            f"label_drop={label_drop} needs conditional=True (labels to drop); pass conditional=True "
            "or label_drop=0"
        )


def _check_eps_hat(eps_hat: ArrayLike, x0: Array) -> Array:
    """The model's output as an array in ``x0``'s dtype; it must be shaped like ``x0``."""
    eps_hat = jnp.asarray(eps_hat)
    if eps_hat.shape != x0.shape:
        raise ValueError(
            f"apply_fn must return eps_hat shaped like its input x, {x0.shape}, got {eps_hat.shape}; "
            "the model must predict one noise value per pixel"
        )
    return eps_hat.astype(x0.dtype)
