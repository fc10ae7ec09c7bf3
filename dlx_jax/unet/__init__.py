"""The book's diffusion UNet (steps 9-10) as a ``flax.linen`` module, with time and label embeddings.

Architecture (``features = f = 64``, ``time_dim = 100``, 2,167,784 parameters; 2,168,784 with
``num_labels = 10``)::

    t (n,) -> sinusoidal time vector v (n, 100)            [+ mask * label_emb[labels] (n, 100)]
    x (n, 28, 28, 1) -> down1 ConvBlock 1 -> f        = x1 (n, 28, 28, f)
                     -> max-pool 2 -> down2 f -> 2f    = x2 (n, 14, 14, 2f)
                     -> max-pool 2 -> bot1 2f -> 4f         (n,  7,  7, 4f)
                     -> bilinear x2 -> concat [., x2] -> up2 (4f + 2f) -> 2f   (n, 14, 14, 2f)
                     -> bilinear x2 -> concat [., x1] -> up1 (2f + f) -> f     (n, 28, 28, f)
                     -> out conv 1x1 f -> 1 = predicted noise (n, 28, 28, 1)

    ConvBlock(c_in, c_out)(x, v) = [conv3x3 pad 1 -> BatchNorm -> ReLU] x 2 applied to
                                   x + (Linear(c_in) . ReLU . Linear(c_in))(v)[:, None, None, :]

exactly the book's ``UNet``/``UNetCond`` (PyTorch, NCHW) in NHWC: the time vector goes through a
two-layer MLP to ``c_in`` numbers that are added to every pixel of the block's input; skips are
concatenated *after* the upsampled tensor (``torch.cat([x, x2], dim=1)``); BatchNorm has
PyTorch's defaults (momentum 0.1, eps 1e-5, see :class:`BatchNorm`); initialisation is PyTorch's
(:func:`torch_uniform_init`). ``experiments/_torch_unet.py`` is the same model in PyTorch and
the tests load identical weights into both.

Parameters (``params``) and running statistics (``batch_stats``) are separate flax collections;
:func:`make_apply_fn` turns the module into the pure ``apply_fn(params, model_state, x, t, labels,
label_mask, *, train) -> (eps_hat, model_state)`` that the diffusion code and the training loop use.

Labels (classifier-free guidance, step 10) are optional. ``label_mask`` (``(n,)`` bool or float)
switches the label embedding per example, ``v = v_time + mask[:, None] * emb[labels]``, so one
compiled function evaluates conditional and unconditional examples in one batch; ``labels=None``
means every example is unconditional.

Convolution formulations (module attribute ``conv_impl``; all have the same parameters and give
the same numbers up to float rounding; the timings are in ``experiments/benchmarks/diffusion.py``):

* ``"hybrid"`` (default): XLA's convolution for the forward pass and the input gradient, and a
  ``jax.custom_vjp`` kernel gradient computed as GEMMs over chunks of 4 images in a ``lax.scan``
  (``_convs._kernel_grad_rows``). XLA:CPU computes a kernel gradient as a convolution whose operands
  it first transposes to ``(c, h, w, n)``: with the transposes, ~40 % of a ``"lax"`` train step;
  the chunked GEMMs run at matmul speed with cache-sized temporaries (0.6x the time per layer).
  The convolution bias is folded into the following BatchNorm, and the skip concatenation is never
  materialised (the first convolution of ``up2`` / ``up1`` is a sum of one convolution per part).
  The fastest train step measured (~1.2x faster than ``"lax"``); sampling (the forward pass only)
  runs as fast as ``"lax"``.
* ``"lax"``: flax ``nn.Conv`` (``lax.conv_general_dilated``) + bias, ``jnp.concatenate`` for the
  skips, BatchNorm of the biased output — the plain reference formulation the others are tested
  against. Supports forward-mode differentiation (``jax.jvp``, ``jax.hessian``); the custom VJP
  of ``"hybrid"`` is reverse-mode only.
* ``"im2col"``: the 9 shifted views stacked into ``(n h w, 9 c_in)`` and one matmul (slower: the
  patch matrix is 9x the activation and XLA:CPU writes it at copy speed).
* ``"rows"``: the 3 horizontal shifts stacked into ``(n (h+2) w, 3 c_in)``, one matmul with the
  ``(3 c_in, 3 c_out)`` kernel, then the sum of 3 vertically shifted slices (slower than XLA's
  convolution, faster than ``"im2col"``).
"""

from dlx_jax.unet._convs import CONV_IMPLS, DEFAULT_CONV_IMPL, KERNEL_GRAD_CHUNK
from dlx_jax.unet._layers import BatchNorm, time_embedding, torch_uniform_init, upsample_bilinear2x
from dlx_jax.unet._model import ConvBlock, UNet, count_params, init, make_apply_fn

__all__ = [
    "CONV_IMPLS",
    "DEFAULT_CONV_IMPL",
    "KERNEL_GRAD_CHUNK",
    "BatchNorm",
    "ConvBlock",
    "UNet",
    "count_params",
    "init",
    "make_apply_fn",
    "time_embedding",
    "torch_uniform_init",
    "upsample_bilinear2x",
]
