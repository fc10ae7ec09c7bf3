"""The one table of test tolerances. Every constant says why it is as loose as it is.

Add new constants here (grouped by module) instead of writing bare ``rtol=`` numbers in tests.
"""

from __future__ import annotations

import numpy as np

# --- general -----------------------------------------------------------------------------------
# float64 vs an independent float64 reference (scipy, sklearn, numpy loops): only summation-order
# rounding differs, a few ulps amplified by logs/Cholesky over ~1e3 terms.
RTOL_F64 = 1e-10
ATOL_F64 = 1e-10
# float32 vs a float64 reference: float32 eps is 1.2e-7; log-pdfs sum d terms and a log-det.
RTOL_F32 = 2e-5
ATOL_F32 = 1e-4
# jit vs eager, vmap vs loop: XLA may fuse/reorder reductions differently; same dtype.
RTOL_JIT_F32 = 1e-6
ATOL_JIT_F32 = 1e-6
RTOL_JIT_F64 = 1e-12
# central finite differences in float64 with step 1e-6: truncation O(h^2) ~1e-12 plus rounding
# eps/h ~ 1e-10 times the function scale.
FD_STEP = 1e-6
RTOL_FD = 1e-6
ATOL_FD = 1e-7


def central_difference(f, x: np.ndarray, h: float = FD_STEP) -> np.ndarray:
    """Central finite-difference gradient of a scalar function ``f`` at float64 ``x``."""
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat = grad.reshape(-1)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = h
        e = e.reshape(x.shape)
        flat[i] = (float(f(x + e)) - float(f(x - e))) / (2 * h)
    return grad
