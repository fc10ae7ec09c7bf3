"""dlx-jax: the generative models of *Deep Learning from Scratch 5* as pure JAX functions.

Import the submodules you need, e.g. ``from dlx_jax import distributions, mixture``. Every numerical
function is pure: ``key`` first for stochastic ones, shape-setting arguments keyword-only, and the
caller decides what to ``jax.jit`` / ``jax.vmap``.
"""

__version__ = "0.1.0"

__all__ = ["checked"]


def __getattr__(name: str):
    # ``dlx_jax.checked`` (the opt-in checked mode of dlx_jax._checks) without importing JAX at
    # package import time
    if name == "checked":
        from dlx_jax._checks import checked

        return checked
    raise AttributeError(f"module 'dlx_jax' has no attribute {name!r}")
