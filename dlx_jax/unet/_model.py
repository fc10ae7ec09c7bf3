"""The book's UNet (:class:`UNet`, :class:`ConvBlock`), its PyTorch-default initialisation and
the pure ``apply_fn`` the diffusion code and the training loop use."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from dlx_jax._checks import check_class_labels
from dlx_jax.unet._convs import CONV_IMPLS, DEFAULT_CONV_IMPL, Conv, conv
from dlx_jax.unet._layers import BatchNorm, max_pool2, time_embedding, torch_uniform_init, upsample_bilinear2x

__all__ = ["ConvBlock", "UNet", "count_params", "init", "make_apply_fn"]


class ConvBlock(nn.Module):
    r"""The book's ``ConvBlock``: time MLP added to the input, then [conv3x3 -> BN -> ReLU] x 2.

    .. math:: u = x + (W_2\,\mathrm{relu}(W_1 v + b_1) + b_2)[:, None, None, :], \qquad
              y = \mathrm{relu}(\mathrm{BN}(\mathrm{conv}(\mathrm{relu}(\mathrm{BN}(\mathrm{conv}(u))))))

    With ``conv_impl != "lax"`` the convolution bias is folded into the BatchNorm (see
    :class:`BatchNorm`): one pass less over each activation, same numbers.

    Attributes:
        features: output channels ``c_out``.
        conv_impl: convolution formulation (see :mod:`dlx_jax.unet`).
    """

    features: int
    conv_impl: str = DEFAULT_CONV_IMPL

    @nn.compact
    def __call__(
        self, x: Float[Array, "n h w c"], v: Float[Array, "n d"], *, train: bool
    ) -> Float[Array, "n h w o"]:
        parts = x if isinstance(x, tuple) else (x,)
        c = sum(part.shape[-1] for part in parts)
        d = v.shape[-1]
        v = nn.Dense(c, kernel_init=torch_uniform_init(d), bias_init=torch_uniform_init(d), name="mlp1")(v)
        v = nn.Dense(c, kernel_init=torch_uniform_init(c), bias_init=torch_uniform_init(c), name="mlp2")(
            nn.relu(v)
        )
        v = v[:, None, None, :].astype(parts[0].dtype)
        if self.conv_impl == "lax":  # the reference: concatenate, add, nn.Conv + bias, BatchNorm
            x = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            x = x + v
            for i in (1, 2):
                x = nn.relu(
                    BatchNorm(name=f"bn{i}")(conv(x, self.features, 3, "lax", f"conv{i}"), train=train)
                )
            return x
        starts = np.cumsum([0] + [part.shape[-1] for part in parts])
        x = tuple(part + v[..., a:b] for part, a, b in zip(parts, starts[:-1], starts[1:], strict=True))
        for i in (1, 2):
            y, b = Conv(self.features, 3, self.conv_impl, add_bias=False, name=f"conv{i}")(x)
            x = nn.relu(BatchNorm(name=f"bn{i}")(y, train=train, shift=b))
        return x


class UNet(nn.Module):
    """The book's UNet for noise prediction (see :mod:`dlx_jax.unet` for the diagram).

    Attributes:
        channels: image channels (1 for MNIST).
        features: width ``f`` of the first level (levels are ``f, 2f, 4f``; the book: 64).
        time_dim: length of the time vector (the book: 100).
        num_labels: number of classes for the label embedding (``None``: no labels, the book's
            ``UNet``; 10: the book's ``UNetCond``).
        conv_impl: convolution formulation, one of :data:`CONV_IMPLS`.
    """

    channels: int = 1
    features: int = 64
    time_dim: int = 100
    num_labels: int | None = None
    conv_impl: str = DEFAULT_CONV_IMPL

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "n h w c"],
        t: Int[Array, " n"] | Float[Array, " n"],
        labels: Int[Array, " n"] | None = None,
        label_mask: Bool[Array, " n"] | Float[Array, " n"] | None = None,
        *,
        train: bool,
    ) -> Float[Array, "n h w c"]:
        r"""Predicted noise :math:`\hat\epsilon(x_t, t[, y])` for noisy images ``x`` at steps ``t``.

        Args:
            x: noisy images ``(n, h, w, channels)``; ``h`` and ``w`` divisible by 4.
            t: time steps ``(n,)`` (the book's 1-based integers; a scalar is broadcast).
            labels: optional class labels ``(n,)`` in ``0..num_labels-1`` (needs ``num_labels``).
                Checked when concrete; under ``jit`` out-of-range labels are clipped.
            label_mask: optional ``(n,)`` bool or float weight of each example's label embedding:
                1 conditional, 0 unconditional (``None`` with labels: all conditional).
            train: (static) BatchNorm with batch statistics — pass ``mutable=["batch_stats"]`` to
                ``apply`` to get the updated running statistics — or with the running statistics.

        Returns:
            ``(n, h, w, channels)`` in ``x``'s dtype.

        Raises:
            ValueError: a wrong rank or channel count, non-float images, ``h``/``w`` not divisible
                by 4, ``t``/``labels``/``label_mask`` of the wrong shape, labels on a model without
                ``num_labels``, labels out of range (when concrete), ``label_mask`` without labels,
                or an unknown ``conv_impl``.
        """
        x, t, labels, label_mask = self._check(x, t, labels, label_mask)
        v = time_embedding(t, self.time_dim, dtype=x.dtype)
        if self.num_labels is not None:
            table = self.param("label_emb", nn.initializers.normal(1.0), (self.num_labels, self.time_dim))
            if labels is not None:
                # clip: under jit labels cannot be range-checked, and a masked-out example may
                # carry any placeholder label; "fill" would give NaN * 0 = NaN.
                emb = jnp.take(table.astype(x.dtype), labels, axis=0, mode="clip")
                if label_mask is not None:
                    emb = emb * label_mask.astype(x.dtype)[:, None]
                v = v + emb
        f, impl = self.features, self.conv_impl
        x1 = ConvBlock(f, impl, name="down1")(x, v, train=train)
        x2 = ConvBlock(2 * f, impl, name="down2")(max_pool2(x1), v, train=train)
        h = ConvBlock(4 * f, impl, name="bot1")(max_pool2(x2), v, train=train)
        # skips go after the upsampled tensor (the book's torch.cat([x, x2], dim=1))
        h = ConvBlock(2 * f, impl, name="up2")((upsample_bilinear2x(h), x2), v, train=train)
        h = ConvBlock(f, impl, name="up1")((upsample_bilinear2x(h), x1), v, train=train)
        return conv(h, self.channels, 1, impl, "out")

    def _check(self, x, t, labels, label_mask):
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        if jnp.ndim(x) != 4 or x.shape[-1] != self.channels:
            raise ValueError(
                f"x must be NHWC images (n, h, w, {self.channels}), got shape {jnp.shape(x)}; "
                "add the batch/channel axes (x[None, ..., None])"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"x must be floating point, got dtype {x.dtype}; cast it with .astype(jnp.float32)"
            )
        n, h, w, _ = x.shape
        if h % 4 or w % 4:
            raise ValueError(
                f"image height and width must be divisible by 4 (two 2x poolings), got {h}x{w}; "
                "pad or crop the images (e.g. 28x28 or 32x32)"
            )
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (n,))
        if t.shape != (n,):
            raise ValueError(f"t must have shape ({n},) (one step per image), got {t.shape}")
        if labels is None:
            if label_mask is not None:
                raise ValueError("label_mask was given without labels; pass labels too, or neither")
            return x, t, None, None
        if self.num_labels is None:
            raise ValueError(
                "labels were given but the model has no label embedding; build it with "
                "UNet(num_labels=10) or pass labels=None"
            )
        labels = jnp.asarray(labels)
        # values only when concrete: under jit a masked-out example may carry any placeholder label
        check_class_labels(
            labels,
            n=n,
            num_classes=self.num_labels,
            per="image",
            note="",
            fix="mark unconditional examples with label_mask=0 instead of an out-of-range label",
            traced=False,
        )
        if label_mask is not None:
            label_mask = jnp.asarray(label_mask)
            if label_mask.shape != (n,):
                raise ValueError(f"label_mask must have shape ({n},), got {label_mask.shape}")
        return x, t, labels, label_mask


def init(
    key: PRNGKeyArray, model: UNet, *, image_shape: tuple[int, int, int] = (28, 28, 1)
) -> tuple[dict, dict]:
    r"""Initial ``(params, batch_stats)`` of ``model`` for images of ``image_shape`` (static).

    PyTorch's default initialisation, the same distributions as the modules' own initialisers:
    every ``kernel`` (conv HWIO or dense ``(in, out)``) and the bias beside it
    :math:`\sim U(-1/\sqrt{\text{fan}_\text{in}}, 1/\sqrt{\text{fan}_\text{in}})` with
    ``fan_in = prod(kernel.shape[:-1])``; BatchNorm ``scale = 1``, ``bias = 0``; the label
    embedding :math:`\sim N(0, 1)`; running means 0 and running variances 1.

    The values come from one uniform and one normal draw of ``key`` cut into the parameters in
    sorted-path order, not from ``model.init`` (whose ~80 separate draws take XLA:CPU 10-20 s to
    compile); the shapes are ``model.init``'s (found with :func:`jax.eval_shape`, nothing runs).

    Args:
        key: PRNG key.
        model: the :class:`UNet`.
        image_shape: (static) ``(h, w, channels)`` of the images.

    Returns:
        ``(params, batch_stats)`` dicts, float32.
    """
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    abstract = jax.eval_shape(lambda k, x_, t_: model.init(k, x_, t_, train=False), key, x, t)
    flat = sorted(_flatten(abstract["params"]).items())
    rules = {path: _init_rule(path, leaf.shape, dict(flat)) for path, leaf in flat}
    sizes = {
        kind: sum(math.prod(leaf.shape) for path, leaf in flat if rules[path][0] == kind) for kind in "un"
    }
    key_u, key_n = jax.random.split(key)
    draws = {
        "u": jax.random.uniform(key_u, (sizes["u"],), jnp.float32, -1.0, 1.0),
        "n": jax.random.normal(key_n, (sizes["n"],), jnp.float32),
    }
    # called eagerly, cut on the host (no per-shape compilations); under jit, in the program.
    # Both multiply in float32, so the values are identical.
    xp = jnp if isinstance(draws["u"], jax.core.Tracer) else np
    draws = {kind: draw if xp is jnp else np.asarray(draw) for kind, draw in draws.items()}
    offsets = {"u": 0, "n": 0}
    values = {}
    for path, leaf in flat:
        kind, scale = rules[path]
        if kind in draws:
            size = math.prod(leaf.shape)
            chunk = draws[kind][offsets[kind] : offsets[kind] + size]
            values[path] = (chunk * np.float32(scale)).reshape(leaf.shape)
            offsets[kind] += size
        else:
            values[path] = xp.full(leaf.shape, scale, np.float32)
    stats = {
        path: xp.zeros(leaf.shape, np.float32) if path[-1] == "mean" else xp.ones(leaf.shape, np.float32)
        for path, leaf in _flatten(abstract["batch_stats"]).items()
    }
    if xp is np:
        values = {path: jnp.asarray(v) for path, v in values.items()}
        stats = {path: jnp.asarray(v) for path, v in stats.items()}
    return _unflatten(values), _unflatten(stats)


def _flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, (*prefix, name)))
        else:
            out[(*prefix, name)] = value
    return out


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


def _init_rule(path: tuple[str, ...], shape: tuple[int, ...], flat: dict) -> tuple[str, float]:
    """``("u", bound)``, ``("n", std)`` or ``("const", value)`` for one parameter (PyTorch's defaults)."""
    name, module = path[-1], path[-2] if len(path) > 1 else ""
    if name == "label_emb":
        return "n", 1.0
    if module.startswith("bn"):
        return "const", 1.0 if name == "scale" else 0.0
    kernel_shape = shape if name == "kernel" else flat[(*path[:-1], "kernel")].shape
    return "u", 1.0 / math.sqrt(math.prod(kernel_shape[:-1]))


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree (2,167,784 for the book's UNet)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def make_apply_fn(model: UNet) -> Callable[..., tuple[Array, dict]]:
    """The model as a pure function of explicit parameters and running statistics.

    Returns:
        ``apply_fn(params, model_state, x, t, labels=None, label_mask=None, *, train)`` returning
        ``(eps_hat, new_model_state)``: ``model_state`` is the ``batch_stats`` dict; in train mode
        BatchNorm uses batch statistics and the running statistics are updated, in eval mode they
        are used and returned unchanged. ``train`` must be static under ``jax.jit``
        (``static_argnames="train"``).
    """

    def apply_fn(params, model_state, x, t, labels=None, label_mask=None, *, train: bool):
        variables = {"params": params, "batch_stats": model_state}
        if train:
            eps_hat, updates = model.apply(
                variables, x, t, labels, label_mask, train=True, mutable=["batch_stats"]
            )
            return eps_hat, updates["batch_stats"]
        return model.apply(variables, x, t, labels, label_mask, train=False), model_state

    return apply_fn
