"""The from-scratch numpy oracle: the seed CNN with hand-written forward and backward passes.

Read it like the book's im2col chapter:

- :mod:`reference_numpy.im2col` -- ``im2col`` / ``col2im``: convolution as one matrix product;
- :mod:`reference_numpy.layers` -- conv (naive loops and im2col), ReLU, max-pool, flatten, dropout,
  dense, softmax cross-entropy; each ``*_forward`` returns ``(y, cache)`` and ``*_backward`` the grads;
- :mod:`reference_numpy.cnn` -- the seed CNN (34,826 parameters): ``init_params``, ``forward``,
  ``backward``, ``loss_and_grads``, ``predict``;
- :mod:`reference_numpy.adam` -- bias-corrected Adam matching ``optax.adam``;
- :mod:`reference_numpy.train` -- ``train_epoch``, ``evaluate``, ``fit``.

numpy only: this package never imports JAX or ``dlx_jax``; it is what the JAX code is tested against.
"""

from reference_numpy import adam, cnn, im2col, layers, train
from reference_numpy.adam import Adam, AdamState
from reference_numpy.cnn import backward, count_params, forward, init_params, loss_and_grads, predict
from reference_numpy.train import evaluate, fit, train_epoch

__all__ = [
    "Adam",
    "AdamState",
    "adam",
    "backward",
    "cnn",
    "count_params",
    "evaluate",
    "fit",
    "forward",
    "im2col",
    "init_params",
    "layers",
    "loss_and_grads",
    "predict",
    "train",
    "train_epoch",
]
