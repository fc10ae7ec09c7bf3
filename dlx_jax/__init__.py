"""dlx-jax: the generative models of *Deep Learning from Scratch 5* as pure JAX functions.

Import the submodules you need, e.g. ``from dlx_jax import distributions, mixture``. Every numerical
function is pure: ``key`` first for stochastic ones, shape-setting arguments keyword-only, and the
caller decides what to ``jax.jit`` / ``jax.vmap``.
"""

__version__ = "0.1.0"
