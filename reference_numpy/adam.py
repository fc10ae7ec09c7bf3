"""Adam with bias correction, written to match ``optax.adam(lr)`` operation for operation.

For each parameter ``p`` with gradient ``g`` at step ``t = 1, 2, ...``::

    m  = b1 * m + (1 - b1) * g            # first moment (mean of g)
    v  = b2 * v + (1 - b2) * g**2         # second moment (uncentred variance of g)
    m_hat = m / (1 - b1**t)               # bias correction: m, v start at 0
    v_hat = v / (1 - b2**t)
    p  = p - lr * m_hat / (sqrt(v_hat) + eps)

Parameters, gradients and moments are nested dicts of arrays (the CNN's params layout). Everything is
pure: :meth:`Adam.update` returns new dicts and never modifies its arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Adam", "AdamState", "tree_map"]


def tree_map(fn: Callable[..., np.ndarray], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leafwise to nested dicts of arrays with the same structure."""
    if isinstance(tree, dict):
        for other in rest:
            if not isinstance(other, dict) or other.keys() != tree.keys():
                raise ValueError(f"trees differ in structure: keys {sorted(tree)} vs {other!r:.80}")
        return {k: tree_map(fn, tree[k], *(o[k] for o in rest)) for k in tree}
    return fn(tree, *rest)


@dataclass(frozen=True)
class AdamState:
    """Step count ``t`` (number of updates done so far) and the two moment trees."""

    count: int
    m: Any
    v: Any


@dataclass(frozen=True)
class Adam:
    """Bias-corrected Adam (Kingma & Ba 2015) with optax's defaults."""

    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if not (self.lr > 0 and 0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.eps >= 0):
            raise ValueError(
                f"Adam needs lr > 0, 0 <= b1, b2 < 1, eps >= 0; got lr={self.lr}, b1={self.b1}, "
                f"b2={self.b2}, eps={self.eps}"
            )

    def init(self, params: Any) -> AdamState:
        """Zero moments shaped like ``params``, ``count = 0``."""
        return AdamState(
            count=0,
            m=tree_map(lambda p: np.zeros_like(p), params),
            v=tree_map(lambda p: np.zeros_like(p), params),
        )

    def update(self, grads: Any, state: AdamState, params: Any) -> tuple[Any, AdamState]:
        """One Adam step: returns ``(new_params, new_state)``; inputs are left untouched."""
        t = state.count + 1

        def moment1(g, m):
            return (1 - self.b1) * g + self.b1 * m

        def moment2(g, v):
            return (1 - self.b2) * (g * g) + self.b2 * v

        m = tree_map(lambda g, m_: moment1(np.asarray(g), m_).astype(m_.dtype), grads, state.m)
        v = tree_map(lambda g, v_: moment2(np.asarray(g), v_).astype(v_.dtype), grads, state.v)

        def step(p, m_, v_):
            dt = p.dtype.type
            m_hat = m_ / dt(1 - self.b1**t)
            v_hat = v_ / dt(1 - self.b2**t)
            return (p + dt(-self.lr) * (m_hat / (np.sqrt(v_hat) + dt(self.eps)))).astype(p.dtype)

        new_params = tree_map(step, params, m, v)
        return new_params, AdamState(count=t, m=m, v=v)
