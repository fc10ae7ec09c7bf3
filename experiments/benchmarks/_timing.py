"""Timing helpers shared by the benchmark sections.

:func:`time_call` times the first call of a callable on its own (for a ``jax.jit``-ed function
that is tracing + compilation + one run) and then the steady state: ``repeats`` further calls,
each waited on with ``block_until_ready`` so JAX's asynchronous dispatch is not mistaken for
speed. Peers (numpy, scipy, scikit-learn, PyTorch) go through the same helper, so both sides of
a ratio are measured the same way, in the same process, one after the other.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

__all__ = ["Timing", "block", "ratio", "time_call"]


@dataclass(frozen=True)
class Timing:
    """Result of :func:`time_call`.

    Attributes:
        compile_s: seconds of the first call (compile + one run for jitted JAX code; the
            warm-up call for everything else).
        median_s: median seconds of the steady-state calls.
        times: every steady-state call, in seconds.
        result: what the last call returned (to check the answer that was timed).
    """

    compile_s: float
    median_s: float
    times: tuple[float, ...]
    result: Any = None

    @property
    def min_s(self) -> float:
        """Fastest steady-state call, in seconds."""
        return min(self.times)

    def metrics(self, prefix: str, *, compile: bool = True) -> dict[str, float]:
        """``{prefix}_median_s`` (and ``{prefix}_compile_s``) for a metrics dict."""
        out = {f"{prefix}_median_s": self.median_s}
        if compile:
            out[f"{prefix}_compile_s"] = self.compile_s
        return out


def block(value: Any) -> Any:
    """Wait for every JAX array in a pytree (other leaves pass through untouched)."""
    for leaf in jax.tree_util.tree_leaves(value):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return value


def time_call(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 5,
    min_total_s: float = 0.0,
    max_repeats: int = 1000,
    **kwargs: Any,
) -> Timing:
    """Time ``fn(*args, **kwargs)``: the first call separately, then the median of the rest.

    Args:
        fn: the callable (e.g. a ``jax.jit``-ed function, or a scipy/sklearn peer).
        *args: positional arguments, passed unchanged to every call.
        repeats: the minimum number of steady-state calls (at least 1).
        min_total_s: keep calling (up to ``max_repeats``) until the steady-state calls add up
            to at least this many seconds; useful for very fast functions.
        max_repeats: an upper bound on steady-state calls.
        **kwargs: keyword arguments, passed unchanged to every call.

    Returns:
        A :class:`Timing` with the first-call seconds, the median steady-state seconds and the
        last result.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}; pass a positive count")
    start = time.perf_counter()
    result = block(fn(*args, **kwargs))
    compile_s = time.perf_counter() - start
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_total_s and len(times) < max_repeats):
        start = time.perf_counter()
        result = block(fn(*args, **kwargs))
        times.append(time.perf_counter() - start)
    return Timing(compile_s=compile_s, median_s=statistics.median(times), times=tuple(times), result=result)


def ratio(slow: Timing | float, fast: Timing | float) -> float:
    """``slow / fast`` of two median times (or plain seconds): how many times faster ``fast`` is."""
    slow_s = slow.median_s if isinstance(slow, Timing) else float(slow)
    fast_s = fast.median_s if isinstance(fast, Timing) else float(fast)
    return slow_s / fast_s if fast_s > 0 else float("inf")
