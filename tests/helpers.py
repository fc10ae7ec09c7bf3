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
# a sharded computation (device mesh, several processes) vs the same on one device: the all-reduce
# adds per-device partial sums, so float32 sums of up to ~1e4 terms are rounded in another order
# (measured: 1e-8 to 4e-6 on one step / 30 EM updates; 100x margin on the largest).
RTOL_MESH_F32 = 1e-4
ATOL_MESH_F32 = 1e-5
# sampled images on a mesh vs one device, relative to the samples' magnitude: a chain of 10-50
# network calls carries the per-call rounding (measured 3e-7 of a scale of ~5).
ATOL_MESH_SAMPLES = 1e-5
# an ensemble member trained in the vmapped call vs the same member trained alone (same keys): the
# batched program rounds differently, and Adam's normalised steps turn rounding-level gradient
# differences into up to lr-sized parameter steps (measured 5e-3 after 45 steps at lr 1e-3).
ATOL_ENSEMBLE_PARAMS = 5e-2
# a VAE member's test scores (sums over 784 pixels and the test set) vs the same member trained
# alone: the same rounding, through two epochs (measured: equal to the last digit on 3 epochs).
RTOL_ENSEMBLE_SCORES = 1e-4
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


# --- distributions (steps 1-3) -------------------------------------------------------------------
# Monte-Carlo checks of samplers: |estimate - target| <= SAMPLE_N_SE standard errors. With fixed
# keys the test is deterministic; 5 SE would fail a correct sampler with probability ~6e-7.
SAMPLE_N_SE = 5.0
# The contract for step02/step03 metrics vs numpy on the same file (float64 computation).
RTOL_NUMPY_CONTRACT = 1e-6

# --- reference_numpy ---------------------------------------------------------------------------
# float32 conv/CNN logits vs the same computation in float64: sums of <= 1600 O(1) products, each
# rounded at 6e-8 relative; 1e-5 absolute covers sqrt(1600) * eps * |terms| with margin.
ATOL_REFNP_F32_VALUES = 1e-5
# float32 whole-CNN gradients vs float64: dw sums over N*OH*OW pixels with cancellation, so small
# entries lose relative precision; compare at 1e-3 relative plus 1e-6 absolute (grads are O(1e-2)).
RTOL_REFNP_F32_GRADS = 1e-3
ATOL_REFNP_F32_GRADS = 1e-6
# Adam hand example: the eps = 1e-8 in the denominator moves a 0.1 step by ~1e-8 relative; the
# literal digits written by hand carry 7 significant figures.
RTOL_ADAM_HAND = 1e-7
RTOL_ADAM_HAND_DIGITS = 1e-6
# numpy Adam vs optax.adam, 20 float32 steps: same operation order, but optax computes 1 - b**t in
# float32 while numpy rounds it from float64; parameters of O(1) move by <= 2e-2 in total.
RTOL_ADAM_OPTAX_F32 = 2e-5
ATOL_ADAM_OPTAX_F32 = 1e-6

# --- nn / cnn ------------------------------------------------------------------------------------
# float32 convolution/matmul vs a float64 loop or another float32 formulation: sums of up to
# kh*kw*c <= 300 products of O(1) numbers, each rounded at 6e-8 relative.
RTOL_CONV_F32 = 1e-5
ATOL_CONV_F32 = 1e-5
# JAX CNN vs reference_numpy, both float32, same params/batch/dropout mask: different summation
# orders in matmuls of up to 15,488 terms (conv2 kernel gradient over 128 x 11 x 11 positions).
RTOL_CNN_REF_F32 = 1e-4
ATOL_CNN_REF_F32 = 1e-5
# parameters after 20 Adam steps (optax vs reference Adam): Adam divides by sqrt(v), so gradient
# rounding differences of ~1e-6 relative become update differences of ~lr * 1e-6 per step; elements
# whose gradients nearly cancel can differ more, bounded by 2 * lr per step.
ATOL_ADAM_TRAJ_F32 = 2e-5
# a compiled lax.scan epoch vs the same steps called one by one (float32): XLA fuses the step
# differently inside the loop body, so reductions are summed in another order.
RTOL_SCAN_VS_LOOP_F32 = 1e-5
ATOL_SCAN_VS_LOOP_F32 = 1e-6
# Glorot-uniform init: the sample standard deviation of >= 288 draws of U(-a, a) is within 15 %
# of a/sqrt(3) (its relative standard error is below 4 % at n = 288, so 15 % is ~4 SE).
RTOL_INIT_STD = 0.15
# the whole CNN loss, float64, directional finite differences with step 1e-6: O(h^2) truncation
# ~1e-10 on an O(1) loss.
ATOL_FD_CNN = 1e-8

# --- mixture -------------------------------------------------------------------------------------
# a full EM fit vs scikit-learn, float64, same init: ~1e-14 per update, amplified by the EM
# contraction over tens of updates (sklearn centres per component, we centre on the data mean).
RTOL_EM_FIT_F64 = 1e-8
# float32 EM vs a float64 reference after a few updates: float32 moments about the data mean.
RTOL_EM_F32 = 1e-3
# the book's printed numbers (step 5) are rounded to 3-4 decimals.
ATOL_BOOK_3DP = 5e-4

# --- vae / hvae / training (issue 4) -----------------------------------------------------------
# Monte Carlo vs closed form: |estimate - exact| within this many standard errors (false-alarm
# probability ~6e-7 per check for a Gaussian-distributed mean).
MC_SIGMAS = 5.0
# a float64 closed form vs scipy.integrate.quad at epsrel 1e-13: both accurate to ~1e-12 relative.
RTOL_QUADRATURE = 1e-9
# float32 model maths (784-wide sums of squares, softplus, exp of log-variances) vs a float64 numpy
# loop: relative rounding ~1e-6 per term accumulated over hundreds of terms.
RTOL_VAE_F32 = 1e-5
ATOL_VAE_F32 = 1e-4
# gradients of the VAE losses in float64 vs central differences (ReLU kinks are avoided with random
# inputs; the loss is O(10) so eps/h rounding is ~1e-9 relative).
RTOL_FD_VAE = 1e-5
ATOL_FD_VAE = 1e-7

# --- metrics (Fréchet distance) ------------------------------------------------------------------
# scipy.linalg.sqrtm works in complex arithmetic with a Schur decomposition; our two-eigh route
# differs in rounding by ~1e-9 relative on 20-d covariances (float64).
RTOL_FRECHET_VS_SQRTM = 1e-8
# identical sets: the cross term equals tr(Σ) through two eigendecompositions, exact to ~1e-13 of
# the trace (float64).
ATOL_FRECHET_ZERO = 1e-9
# float32 eigendecompositions of rank-deficient 40-d covariances: eigenvalue errors ~eps·‖Σ‖ enter
# through square roots, ~1e-4 relative on the distance.
RTOL_FRECHET_F32 = 1e-3

# --- diffusion ---------------------------------------------------------------------------------
# the book's schedule values are quoted to 4 significant figures (0.8970, 0.07859, 4.036e-5):
# rounding there is at most half a unit in the 4th digit, <= 1.3e-4 relative for these leading
# digits; 2e-4 leaves room for the float32 cast (6e-8).
RTOL_BOOK_4_SIG_FIGS = 2e-4
# float32 diffusion maths (a step, q_sample) vs the same formula in float64 numpy: a handful of
# roundings at 6e-8 relative on O(1) values, amplified at most ~100x where the DDPM mean divides
# by sqrt(1 - alpha_bar_1) = 0.01.
RTOL_DIFFUSION_F32 = 1e-5
ATOL_DIFFUSION_F32 = 1e-5
# DDIM (eta = 1, s = t - 1) vs the DDPM step, float32: the DDIM route goes through x0_hat, which
# at t = T is ~150x larger than x_t (1 / sqrt(alpha_bar_T)) before it is scaled back, so the two
# algebraically equal updates differ by ~150 * 6e-8 ~ 1e-5 in the worst case (measured 1.2e-6).
ATOL_DDIM_VS_DDPM_F32 = 1e-5
# the same in float64: measured 7e-15.
ATOL_DDIM_VS_DDPM_F64 = 1e-12
# model error of sampling with the *exact* denoiser of Gaussian data N(0.3, 0.5^2), computed by
# propagating the sampler's mean and variance exactly in float64 (tests/test_diffusion.py):
# ancestral DDPM with the posterior variance beta~_t (T = 1000) ends with std 0.4961 (0.8 % low)
# and mean 0.299997; DDIM with 50 steps and eta = 0 (a first-order ODE discretisation) ends with
# std 0.4719 (5.6 % low) and mean 0.2991. Tolerances relative to the data std s = 0.5:
RTOL_DDPM1000_GAUSSIAN = 0.01
RTOL_DDIM50_GAUSSIAN = 0.07

# --- unet ----------------------------------------------------------------------------------------
# the time vector in float32 vs float64 loops: the argument t * 10000^(-i/D) reaches 1000 rad, and
# its float32 rounding (6e-8 relative -> 6e-5 absolute) moves sin/cos by as much; 3x margin.
ATOL_TIME_EMB_F32 = 2e-4
# UNet outputs (float32, O(1) after BatchNorm) of two formulations of the same model (conv
# formulations, or JAX vs the PyTorch peer): conv sums of up to 9 * 384 products in other orders,
# and train-mode BatchNorm divides by per-channel batch std ~0.1-1, amplifying absolute rounding
# error; observed <= 6e-6.
RTOL_UNET_F32 = 1e-4
ATOL_UNET_F32 = 5e-5
# float32 parameter/input gradients of the UNet loss (entries up to ~0.3) between formulations:
# observed <= 2e-7 absolute. Conv biases feed straight into BatchNorm, so their exact gradient is 0
# (the fast formulations return exactly 0, the reference returns rounding noise ~4e-8): only the
# absolute tolerance can compare them.
RTOL_UNET_GRAD_F32 = 1e-4
ATOL_UNET_GRAD_F32 = 2e-6
# the same gradients in float64: observed 3e-14 relative; the conv-bias noise is ~5e-17.
RTOL_UNET_GRAD_F64 = 1e-10
ATOL_UNET_GRAD_F64 = 1e-13
# BatchNorm running statistics: float32 one-pass mean / mean-of-squares over 2,000 values vs a
# float64 numpy two-pass computation (data of mean ~0.3, std ~1: cancellation costs < 1 digit).
RTOL_BN_STATS_F32 = 1e-5
ATOL_BN_STATS_F32 = 1e-6

# --- hardening: properties and numerical guards (tests/test_properties.py, test_numerical_guards.py)
# a float32 density integrated with the trapezoid rule in float64 on a grid of spacing <= sigma / 10
# spanning +-12 sigma: the rule's error on a Gaussian is exponentially small at that spacing and the
# tails beyond 12 sigma weigh 1e-32, so what remains is float32 rounding of the summed values
# (~1e-7 relative each, partly cancelling); 1e-5 leaves a wide margin.
RTOL_DENSITY_NORMALISATION = 1e-5
# one float32 EM step never lowers the mean log-likelihood except by rounding (log-densities of
# O(10) nats summed over <= 32 points, ~1e-6 relative) and the reg_covar = 1e-6 ridge on
# variances >= 1e-2 (<= 1e-4 nats): allowed decrease = RTOL * |loglik| + ATOL.
RTOL_EM_MONOTONE_F32 = 1e-5
ATOL_EM_MONOTONE_F32 = 1e-3
# a float32 component collapsed onto one point far (D = 10) from the data mean: its covariance is
# reg_covar * I plus (x - mu)^2 with |x - mu| ~ eps * D ~ 1e-6, i.e. 1e-12 on top of 1e-6; the
# moment formula this guards against is off by ~D^2 * eps ~ 1e-5 (ten times reg_covar).
RTOL_COLLAPSED_COVARIANCE_F32 = 1e-3

# --- the book's printed numbers (issue 15) ------------------------------------------------------
# The book's notebooks print float64 values by repr (all 16-17 digits). The project computes the
# same quantities by other float64 arithmetic (its own erf for the normal CDF, an Σ/n mean, an LU or
# log-sum for KL, det): they agree to a few ulps, measured ≤ 3.5e-14 relative (step 2's P(x ≤ 160)).
RTOL_BOOK_F64 = 1e-13
# Notebook 06's Rosenbrock positions every 1,000 steps: the same float32 loop (including its doubled
# first gradient), with JAX's and PyTorch's gradient arithmetic in another order; 10,000 steps of
# float32 rounding leave ≤ 1.9e-6 (measured).
ATOL_BOOK_ROSENBROCK_F32 = 1e-5
