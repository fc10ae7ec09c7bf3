"""Gaussian mixture models and EM (book steps 4-5), as pure functions.

A ``k``-component GMM in ``d`` dimensions has density

.. math::  p(x) = \\sum_{j=1}^k \\phi_j \\, \\mathcal N(x; \\mu_j, \\Sigma_j).

Parameters are stored as :class:`GMMParams` — log-weights, means and the lower Cholesky factors
``L_j`` of the covariances (``Σ_j = L_j L_jᵀ``) — so that every density is computed in log space
with one triangular inverse per component and a single matrix product for all components and
samples:

.. math::  \\log \\mathcal N(x; \\mu_j, \\Sigma_j) = -\\tfrac12 \\lVert L_j^{-1}(x - \\mu_j) \\rVert^2
           - \\textstyle\\sum_i \\log (L_j)_{ii} - \\tfrac d2 \\log 2\\pi.

EM (:func:`e_step`, :func:`m_step`, :func:`em_step`, :func:`fit`) follows the book and
``sklearn.mixture.GaussianMixture(covariance_type="full")``; :func:`fit` iterates inside
``lax.while_loop`` and :func:`fit_restarts` fits ``n_init`` random initialisations in one compiled
call with ``vmap``.

Validation: shapes, ranks and static settings (``k >= 1``, ``k <= n``, ``max_iter``) are checked
at trace time. Value checks (NaN or ±inf in the data or parameters, weights that do not sum to
one, covariances that are not symmetric positive definite, hyper-parameters such as a negative
``reg_covar``) need concrete arrays: they run when the input is not a ``jax.core.Tracer`` (eager
calls, and the arguments of a jitted function *before* it is jitted, e.g. in the experiment
layer) and are skipped under ``jit``/``vmap``. For concrete inputs :func:`init_params`,
:func:`m_step`, :func:`fit` and :func:`fit_restarts` also check their *result*: a covariance that
became singular (duplicate points or constant data with ``reg_covar=0``) raises a ``ValueError``
naming ``reg_covar``, as scikit-learn does; under ``jit`` the result is NaN instead, unless the
call is wrapped with ``dlx_jax.checked``, which raises the same error from compiled code.

With the default ``reg_covar=1e-6`` a component that collapses onto duplicate points stays
finite: the M-step notices when the fast moment formula for the covariances has lost its digits
to cancellation and recomputes them centred on the component means.

**Large N on several devices.** Every sum over the data (the E-step's responsibilities, the
M-step's sufficient statistics :math:`N_j`, :math:`\\sum_i \\gamma_{ij} x_i`,
:math:`\\sum_i \\gamma_{ij} x_i x_i^\\top`, the log-likelihood) is a reduction over the data axis, so
data placed sharded over a device mesh, ``x = jax.device_put(x, training.batch_sharding(mesh))``
(``n`` a multiple of the device count), makes :func:`fit`, :func:`em_step` and :func:`fit_restarts`
compute each device's partial statistics and one all-reduce per update (XLA's SPMD partitioner;
the parameters stay replicated, the restarts still vmapped). The numbers are those of one device up
to the order of float32 sums.

Every function preserves the floating dtype of its inputs (float32 in, float32 out; float64 in,
float64 out). Functions are undecorated: the caller jits them (``max_iter``, ``n``, ``k``,
``n_init``, ``method`` and ``floor`` are static).
"""

from dlx_jax.mixture._em import EMInfo, e_step, em_step, fit, m_step
from dlx_jax.mixture._model import (
    GMMParams,
    component_log_densities,
    gmm_logpdf,
    gmm_params_from_covariances,
    mean_log_likelihood,
    sample_gmm,
)
from dlx_jax.mixture._restarts import INIT_METHODS, Restarts, fit_restarts, init_params

__all__ = [
    "INIT_METHODS",
    "EMInfo",
    "GMMParams",
    "Restarts",
    "component_log_densities",
    "e_step",
    "em_step",
    "fit",
    "fit_restarts",
    "gmm_logpdf",
    "gmm_params_from_covariances",
    "init_params",
    "m_step",
    "mean_log_likelihood",
    "sample_gmm",
]
