"""A hostile user's inputs to every public library family: each gives ONE ``ValueError`` that names
the problem and the fix, raised by the library before any JAX internals.

Every case is ``(call, problem, fix)``: ``call()`` must raise ``ValueError`` whose message matches
both regular expressions. The arrays are tiny so the whole matrix runs in seconds. The last tests
cover what cannot be checked under plain ``jit`` (values) and the opt-in checked mode,
``dlx_jax.checked``, that turns those cases into the same kind of error inside compiled code.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlx_jax
from dlx_jax import bounds, cnn, hvae, metrics, mixture, nn, unet, vae
from dlx_jax import diffusion as dif
from dlx_jax import distributions as D

KEY = jax.random.key(0)
F32 = np.float32


# --- tiny, cached models and data -------------------------------------------------------------------


@functools.cache
def cnn_params() -> dict:
    """Seed-CNN parameters of the right shapes (zeros: no random draw, nothing to compile)."""
    return {
        "conv1": {"w": np.zeros((3, 3, 1, 32), F32), "b": np.zeros(32, F32)},
        "conv2": {"w": np.zeros((3, 3, 32, 64), F32), "b": np.zeros(64, F32)},
        "dense": {"w": np.zeros((1600, 10), F32), "b": np.zeros(10, F32)},
    }


@functools.cache
def vae_params() -> vae.VAEParams:
    return vae.init_params(KEY, input_dim=4, hidden_dim=3, latent_dim=2)


@functools.cache
def hvae_params() -> hvae.HVAEParams:
    return hvae.init_params(KEY, input_dim=4, hidden_dim=3, latent_dim=2)


@functools.cache
def gmm() -> mixture.GMMParams:
    return mixture.gmm_params_from_covariances(
        np.array([0.5, 0.5], F32),
        np.array([[0.0, 0.0], [3.0, 3.0]], F32),
        np.stack([np.eye(2, dtype=F32)] * 2),
    )


@functools.cache
def schedule() -> dif.Schedule:
    return dif.linear_schedule(10)


def images(value: float, n: int = 2) -> np.ndarray:
    return np.full((n, 28, 28, 1), value, F32)


def pixels(value: float, n: int = 2, d: int = 4) -> np.ndarray:
    return np.full((n, d), value, F32)


def duplicates() -> np.ndarray:
    """Five copies of one point, five of another and one more: EM collapses a component onto a
    duplicated point, whose covariance is then exactly zero without reg_covar."""
    return np.array([[1.0, 2.0]] * 5 + [[3.0, 5.0]] * 5 + [[0.0, 1.0]], F32)


def with_nan(a: np.ndarray, value: float = np.nan) -> np.ndarray:
    a = np.array(a, dtype=F32, copy=True)
    a.reshape(-1)[0] = value
    return a


def eps_fn(x, t, labels=None, label_mask=None):
    return jnp.zeros_like(x)


def unet_call(x, t=None, labels=None, num_labels=None):
    """A UNet forward pass with no parameters: the input checks run before any parameter is read."""
    model = unet.UNet(features=4, time_dim=8, num_labels=num_labels)
    t = jnp.ones((x.shape[0],), jnp.int32) if t is None else t
    return model.apply({"params": {}, "batch_stats": {}}, x, t, labels, train=False)


PIXELS_FIX = r"divide 0-255 images by 255"
REG_FIX = r"increase reg_covar, e\.g\. reg_covar=1e-6"

CASES = [
    # --- distributions ------------------------------------------------------------------------------
    (
        "normal_logpdf sigma=0",
        lambda: D.normal_logpdf(0.0, 0.0, 0.0),
        r"sigma must be > 0",
        r"pass a positive sigma",
    ),
    (
        "normal_logpdf sigma=inf",
        lambda: D.normal_logpdf(0.0, 0.0, np.inf),
        r"sigma must be > 0 and finite",
        r"pass a positive sigma",
    ),
    (
        "normal_logpdf mu=nan",
        lambda: D.normal_logpdf(0.0, np.nan, 1.0),
        r"mu contains NaN or infinite",
        r"pass a finite mu",
    ),
    (
        "normal_cdf sigma<0",
        lambda: D.normal_cdf(0.0, 0.0, -1.0),
        r"sigma must be > 0",
        r"pass a positive sigma",
    ),
    (
        "sample_normal sigma=nan",
        lambda: D.sample_normal(KEY, 0.0, np.nan),
        r"sigma must be > 0 and finite",
        r"pass a positive sigma",
    ),
    (
        "normal_mle +inf data",
        lambda: D.normal_mle(np.array([1.0, np.inf, 2.0])),
        r"x contains NaN or infinite",
        r"drop or impute",
    ),
    (
        "normal_mle ddof >= n",
        lambda: D.normal_mle(np.zeros(1), ddof=1),
        r"needs more than ddof=1 samples, got n=1",
        r"pass more data or a smaller ddof",
    ),
    (
        "mvn_mle -inf data",
        lambda: D.mvn_mle(with_nan(np.zeros((3, 2)), -np.inf)),
        r"x contains NaN or infinite",
        r"drop or impute",
    ),
    (
        "mvn_mle 1-D data",
        lambda: D.mvn_mle(np.zeros(3)),
        r"x must have shape \(n, d\), got \(3,\)",
        r"x\[:, None\] or normal_mle",
    ),
    (
        "mvn_logpdf inf cov",
        lambda: D.mvn_logpdf(np.zeros(2), np.zeros(2), np.array([[np.inf, 0.0], [0.0, 1.0]])),
        r"cov contains NaN or infinite",
        r"check how the covariance was computed",
    ),
    (
        "mvn_logpdf inf mean",
        lambda: D.mvn_logpdf(np.zeros(2), np.array([np.inf, 0.0]), np.eye(2)),
        r"mean contains NaN or infinite",
        r"pass a finite mean",
    ),
    (
        "mvn_logpdf x of wrong d",
        lambda: D.mvn_logpdf(np.zeros(3), np.zeros(2), np.eye(2)),
        r"x must have shape \(\.\.\., d\) with d=2",
        r"pass points with the mean's number of features",
    ),
    (
        "mvn_logpdf cov and scale_tril",
        lambda: D.mvn_logpdf(np.zeros(2), np.zeros(2), np.eye(2), scale_tril=np.eye(2)),
        r"exactly one of cov= or scale_tril=",
        r"drop the other one",
    ),
    (
        "mvn_logpdf negative scale_tril",
        lambda: D.mvn_logpdf(np.zeros(2), np.zeros(2), scale_tril=-np.eye(2)),
        r"scale_tril must be lower triangular with a positive diagonal",
        r"pass jnp\.linalg\.cholesky\(cov\)",
    ),
    (
        "scale_tril_from_cov non-symmetric",
        lambda: D.scale_tril_from_cov(np.array([[1.0, 0.5], [0.0, 1.0]])),
        r"cov is not symmetric",
        r"pass \(cov \+ cov\.T\) / 2",
    ),
    (
        "scale_tril_from_cov not PD",
        lambda: D.scale_tril_from_cov(np.array([[1.0, 2.0], [2.0, 1.0]])),
        r"cov is not positive definite",
        r"add a small ridge",
    ),
    (
        "scale_tril_from_cov -inf",
        lambda: D.scale_tril_from_cov(np.array([[-np.inf, 0.0], [0.0, 1.0]])),
        r"cov contains NaN or infinite",
        r"check how the covariance was computed",
    ),
    (
        "sample_mvn shape too small",
        lambda: D.sample_mvn(KEY, np.zeros((3, 2)), np.eye(2), shape=(2,)),
        r"does not hold the parameters' batch shape \(3,\)",
        r"pass shape=\(n, \*\(3,\)\)",
    ),
    # --- mixture ------------------------------------------------------------------------------------
    (
        "init_params k=0",
        lambda: mixture.init_params(KEY, duplicates(), k=0),
        r"n_components\) must be >= 1, got 0",
        r"pass e\.g\. k=2",
    ),
    (
        "init_params k>n",
        lambda: mixture.init_params(KEY, duplicates(), k=12),
        r"k = 12 components need at least k samples, got n = 11",
        r"use fewer components or more data",
    ),
    (
        "init_params k not int",
        lambda: mixture.init_params(KEY, duplicates(), k=2.0),
        r"k \(n_components\) must be an int",
        r"pass e\.g\. k=2",
    ),
    (
        "init_params constant data, reg_covar=0",
        lambda: mixture.init_params(KEY, np.ones((6, 2), F32), k=2, reg_covar=0.0),
        r"data covariance .* not positive definite with reg_covar=0: constant or collinear features",
        REG_FIX,
    ),
    (
        "init_params unknown method",
        lambda: mixture.init_params(KEY, duplicates(), k=2, method="kmeans"),
        r"method must be one of",
        r"pick one of them",
    ),
    (
        "fit duplicates, reg_covar=0",
        lambda: mixture.fit(duplicates(), mixture.init_params(KEY, duplicates(), k=3), reg_covar=0.0),
        r"EM produced non-finite parameters with reg_covar=0: a covariance became singular",
        REG_FIX,
    ),
    (
        "fit_restarts constant data, reg_covar=0",
        lambda: mixture.fit_restarts(KEY, np.ones((6, 2), F32), k=2, n_init=2, reg_covar=0.0),
        r"not positive definite with reg_covar=0",
        REG_FIX,
    ),
    (
        "fit_restarts n_init=0",
        lambda: mixture.fit_restarts(KEY, duplicates(), k=2, n_init=0),
        r"n_init must be an int >= 1",
        r"pass e\.g\. n_init=10",
    ),
    (
        "fit reg_covar<0",
        lambda: mixture.fit(duplicates(), gmm(), reg_covar=-1.0),
        r"reg_covar must be >= 0 and finite, got -1",
        r"pass e\.g\. reg_covar=1e-6",
    ),
    (
        "fit reg_covar=inf",
        lambda: mixture.fit(duplicates(), gmm(), reg_covar=np.inf),
        r"reg_covar must be >= 0 and finite, got inf",
        r"pass e\.g\. reg_covar=1e-6",
    ),
    (
        "fit max_iter=0",
        lambda: mixture.fit(duplicates(), gmm(), max_iter=0),
        r"max_iter must be an int >= 1",
        r"pass e\.g\. max_iter=100",
    ),
    (
        "fit inf data",
        lambda: mixture.fit(with_nan(duplicates(), np.inf), gmm()),
        r"x contains NaN or infinite",
        r"remove or impute",
    ),
    (
        "gmm_logpdf NaN means",
        lambda: mixture.gmm_logpdf(np.zeros((3, 2), F32), gmm()._replace(means=with_nan(gmm().means))),
        r"params\.means contains NaN or infinite",
        r"build params with init_params",
    ),
    (
        "gmm_logpdf k=0 params",
        lambda: mixture.gmm_logpdf(
            np.zeros((3, 2), F32),
            mixture.GMMParams(np.zeros(0, F32), np.zeros((0, 2), F32), np.zeros((0, 2, 2), F32)),
        ),
        r"n_components k >= 1",
        r"build them with init_params",
    ),
    (
        "gmm_params_from_covariances weights",
        lambda: mixture.gmm_params_from_covariances(
            np.array([0.5, 0.7]), np.zeros((2, 1)), np.ones((2, 1, 1))
        ),
        r"weights must be >= 0 and sum to 1",
        r"normalise them",
    ),
    (
        "gmm_params_from_covariances inf cov",
        lambda: mixture.gmm_params_from_covariances(
            np.array([0.5, 0.5]), np.zeros((2, 1)), np.full((2, 1, 1), np.inf)
        ),
        r"covariances contains NaN or infinite",
        r"pass finite covariances",
    ),
    (
        "m_step NaN log_resp",
        lambda: mixture.m_step(duplicates(), with_nan(np.zeros((11, 2)))),
        r"log_resp contains NaN",
        r"pass the output of e_step",
    ),
    (
        "sample_gmm n<0",
        lambda: mixture.sample_gmm(KEY, gmm(), n=-1),
        r"n must be a non-negative int",
        r"pass e\.g\. n=500",
    ),
    # --- nn -----------------------------------------------------------------------------------------
    (
        "softmax_cross_entropy label = k",
        lambda: nn.softmax_cross_entropy(np.zeros((2, 3), F32), np.array([0, 3])),
        r"labels must lie in 0\.\.2 \(class indices\), got values in 0\.\.3",
        r"fix or drop the out-of-range labels",
    ),
    (
        "softmax_cross_entropy label -1",
        lambda: nn.softmax_cross_entropy(np.zeros((2, 3), F32), np.array([-1, 0])),
        r"labels must lie in 0\.\.2",
        r"fix or drop the out-of-range labels",
    ),
    (
        "softmax_cross_entropy float labels",
        lambda: nn.softmax_cross_entropy(np.zeros((2, 3), F32), np.array([0.0, 1.0])),
        r"labels must be integer class indices",
        r"jnp\.asarray\(labels, jnp\.int32\)",
    ),
    (
        "softmax_cross_entropy label count",
        lambda: nn.softmax_cross_entropy(np.zeros((2, 3), F32), np.array([0, 1, 2])),
        r"labels must have shape \(2,\)",
        r"pass as many labels as examples",
    ),
    (
        "dense integer input",
        lambda: nn.dense(np.ones((2, 3), np.int32), np.ones((3, 2), F32)),
        r"x must be a floating-point array, got dtype int32",
        r"astype\(jnp\.float32\)",
    ),
    (
        "conv2d channel mismatch",
        lambda: nn.conv2d(np.zeros((1, 5, 5, 2), F32), np.zeros((3, 3, 1, 4), F32)),
        r"kernel expects 1 input channels but x has 2",
        r"kernels are HWIO",
    ),
    (
        "max_pool2d window too big",
        lambda: nn.max_pool2d(np.zeros((1, 2, 2, 1), F32), size=3),
        r"pool window 3 is larger than the 2x2 input",
        r"use a smaller size",
    ),
    (
        "dropout rate=1",
        lambda: nn.dropout(KEY, np.ones(3, F32), rate=1.0),
        r"dropout rate must be in \[0, 1\), got 1\.0",
        r"pass e\.g\. rate=0\.5",
    ),
    (
        "init_dense fan_in=0",
        lambda: nn.init_dense(KEY, fan_in=0, fan_out=2),
        r"fan_in must be an integer >= 1, got 0",
        r"pass e\.g\. fan_in=",
    ),
    # --- cnn ----------------------------------------------------------------------------------------
    (
        "cnn.loss label 10",
        lambda: cnn.loss(cnn_params(), images(0.5), np.array([10, 1]), dropout_mask=np.ones((2, 1600), F32)),
        r"labels y must lie in 0\.\.9 \(class indices\), got values in 1\.\.10",
        r"fix or drop the out-of-range labels",
    ),
    (
        "cnn.loss label -1",
        lambda: cnn.loss(cnn_params(), images(0.5), np.array([-1, 1]), dropout_mask=np.ones((2, 1600), F32)),
        r"labels y must lie in 0\.\.9 .* got values in -1\.\.1",
        r"fix or drop the out-of-range labels",
    ),
    (
        "cnn.accuracy label count",
        lambda: cnn.accuracy(cnn_params(), images(0.5), np.array([1, 2, 3])),
        r"labels y must have shape \(n,\) = \(2,\)",
        r"pass as many labels as images",
    ),
    (
        "cnn.accuracy label count under jit",
        lambda: jax.jit(cnn.accuracy)(cnn_params(), images(0.5), np.array([1, 2, 3])),
        r"labels y must have shape \(n,\) = \(2,\)",
        r"pass as many labels as images",
    ),
    (
        "cnn.evaluate float labels",
        lambda: cnn.evaluate(cnn_params(), images(0.5), np.array([1.0, 2.0])),
        r"labels y must be integer class indices in 0\.\.9",
        r"jnp\.asarray\(labels y, jnp\.int32\)",
    ),
    (
        "cnn.apply 0-255 images",
        lambda: cnn.apply(cnn_params(), images(255.0)),
        r"images has values in \[255, 255\], outside \[0, 1\]",
        PIXELS_FIX,
    ),
    (
        "cnn.apply uint8 images",
        lambda: cnn.apply(cnn_params(), images(1.0).astype(np.uint8)),
        r"images must be float in \[0, 1\], got dtype uint8",
        r"use dlx_jax\.data\.to_float_images",
    ),
    (
        "cnn.features wrong size",
        lambda: cnn.features(cnn_params(), np.zeros((2, 32, 32, 1), F32)),
        r"images must have shape \(n, 28, 28, 1\)",
        r"resize to 28x28",
    ),
    (
        "cnn.predict batch_size=0",
        lambda: cnn.predict(cnn_params(), images(0.5), batch_size=0),
        r"batch_size must be an integer >= 1, got 0",
        r"pass e\.g\. batch_size=",
    ),
    # --- vae ----------------------------------------------------------------------------------------
    (
        "vae.book_loss 0-255 pixels",
        lambda: vae.book_loss(KEY, vae_params(), pixels(255.0)),
        r"x has values in \[255, 255\], outside \[0, 1\]",
        PIXELS_FIX,
    ),
    (
        "vae.elbo 0-255 pixels",
        lambda: vae.elbo(KEY, vae_params(), pixels(255.0)),
        r"x has values in \[255, 255\]",
        PIXELS_FIX,
    ),
    (
        "vae.iwae_bound negative pixels",
        lambda: vae.iwae_bound(KEY, vae_params(), pixels(-0.5), num_samples=2),
        r"x has values in \[-0\.5, -0\.5\]",
        PIXELS_FIX,
    ),
    (
        "vae.log_importance_weights NaN pixels",
        lambda: vae.log_importance_weights(KEY, vae_params(), with_nan(pixels(0.5)), num_samples=2),
        r"x contains NaN or infinite values; expected pixels in \[0, 1\]",
        PIXELS_FIX,
    ),
    (
        "vae.iwae_bound num_samples=0",
        lambda: vae.iwae_bound(KEY, vae_params(), pixels(0.5), num_samples=0),
        r"num_samples must be an integer >= 1, got 0",
        r"pass e\.g\. num_samples=1",
    ),
    (
        "vae.elbo unknown likelihood",
        lambda: vae.elbo(KEY, vae_params(), pixels(0.5), likelihood="gaussian"),
        r"likelihood='gaussian' is not one of",
        r"pick one of them",
    ),
    (
        "vae.book_loss wrong width",
        lambda: vae.book_loss(KEY, vae_params(), pixels(0.5, d=5)),
        r"x has shape \(2, 5\) but the model expects \(\.\.\., 4\)",
        r"flatten images",
    ),
    (
        "vae.init_params latent_dim=0",
        lambda: vae.init_params(KEY, latent_dim=0),
        r"latent_dim must be an integer >= 1, got 0",
        r"pass e\.g\. latent_dim=20",
    ),
    (
        "vae.reparameterize shapes",
        lambda: vae.reparameterize(KEY, jnp.zeros(2), jnp.zeros(3)),
        r"mu \(2,\) and logvar \(3,\) must have the same shape",
        r"pass the two heads of one encoder",
    ),
    # --- hvae ---------------------------------------------------------------------------------------
    (
        "hvae.book_loss 0-255 pixels",
        lambda: hvae.book_loss(KEY, hvae_params(), pixels(255.0)),
        r"x has values in \[255, 255\]",
        PIXELS_FIX,
    ),
    (
        "hvae.elbo NaN pixels",
        lambda: hvae.elbo(KEY, hvae_params(), with_nan(pixels(0.5))),
        r"x contains NaN or infinite values",
        PIXELS_FIX,
    ),
    (
        "hvae.iwae_bound wrong width",
        lambda: hvae.iwae_bound(KEY, hvae_params(), pixels(0.5, d=3), num_samples=2),
        r"x has shape \(2, 3\) but the model expects \(\.\.\., 4\)",
        r"flatten images",
    ),
    (
        "hvae.init_params hidden_dim=-1",
        lambda: hvae.init_params(KEY, hidden_dim=-1),
        r"hidden_dim must be an integer >= 1",
        r"pass e\.g\. hidden_dim=20",
    ),
    # --- bounds -------------------------------------------------------------------------------------
    (
        "bounds.log_likelihood pixels > 1",
        lambda: bounds.log_likelihood(np.zeros((2, 4), F32), pixels(2.0)),
        r"x has values in \[2, 2\], outside \[0, 1\]",
        PIXELS_FIX,
    ),
    (
        "bounds.bernoulli_log_likelihood shapes",
        lambda: bounds.bernoulli_log_likelihood(np.zeros((2, 4), F32), pixels(0.5, d=3)),
        r"shapes do not broadcast: logits \(2, 4\), x \(2, 3\)",
        r"pass arrays of the same shape",
    ),
    (
        "bounds.binarize 0-255 pixels",
        lambda: bounds.binarize(pixels(200.0)),
        r"x has values in \[200, 200\]",
        PIXELS_FIX,
    ),
    (
        "bounds.binarize threshold",
        lambda: bounds.binarize(pixels(0.5), threshold=1.5),
        r"threshold must lie in \(0, 1\)",
        r"pass e\.g\. threshold=0\.5",
    ),
    (
        "bounds.iwae_from_log_weights scalar",
        lambda: bounds.iwae_from_log_weights(jnp.float32(0.0)),
        r"log_w must have shape \(k, \.\.\.\) with k >= 1",
        r"pass at least one log weight",
    ),
    (
        "bounds.gaussian_kl shapes",
        lambda: bounds.gaussian_kl(jnp.zeros(2), jnp.zeros(3)),
        r"must have the same shape",
        r"pass the two heads of one encoder",
    ),
    (
        "bounds.diag_normal_log_pdf shapes",
        lambda: bounds.diag_normal_log_pdf(jnp.zeros(2), jnp.zeros(3)),
        r"shapes do not broadcast: z \(2,\), mu \(3,\)",
        r"pass arrays of the same shape",
    ),
    # --- metrics ------------------------------------------------------------------------------------
    (
        "frechet_distance NaN features",
        lambda: metrics.frechet_distance(with_nan(np.zeros((3, 2))), np.zeros((3, 2), F32)),
        r"x contains NaN or infinite",
        r"drop the examples with NaN/inf features",
    ),
    (
        "frechet_distance one example",
        lambda: metrics.frechet_distance(np.zeros((1, 2), F32), np.zeros((3, 2), F32)),
        r"need at least 2 feature vectors per set, got 1 and 3",
        r"pass more examples",
    ),
    (
        "frechet_distance feature mismatch",
        lambda: metrics.frechet_distance(np.zeros((3, 2), F32), np.zeros((3, 4), F32)),
        r"must be \(n, d\) and \(m, d\) feature matrices",
        r"flatten each set",
    ),
    (
        "gaussian_frechet_distance non-symmetric",
        lambda: metrics.gaussian_frechet_distance(
            np.zeros(2), np.array([[1.0, 1.0], [0.0, 1.0]]), np.zeros(2), np.eye(2)
        ),
        r"cov1 is not symmetric",
        r"pass a covariance matrix",
    ),
    # --- diffusion ----------------------------------------------------------------------------------
    (
        "q_sample t > T",
        lambda: dif.q_sample(KEY, schedule(), np.zeros((2, 4, 4, 1), F32), np.array([1, 11])),
        r"t must lie in 0\.\.10 .* got values in 1\.\.11",
        r"draw timesteps with sample_timesteps",
    ),
    (
        "q_sample integer images",
        lambda: dif.q_sample(KEY, schedule(), np.zeros((2, 4, 4, 1), np.uint8), 3),
        r"x0 must be a floating array",
        r"x\.astype\(jnp\.float32\) / 255",
    ),
    (
        "q_sample NaN images",
        lambda: dif.q_sample(KEY, schedule(), with_nan(np.zeros((2, 4, 4, 1))), 3),
        r"x0 contains NaN or infinite values",
        r"drop or fix the examples",
    ),
    (
        "ddpm_step NaN eps_hat",
        lambda: dif.ddpm_step(
            KEY, schedule(), np.zeros((2, 4, 4, 1), F32), 3, with_nan(np.zeros((2, 4, 4, 1)))
        ),
        r"eps_hat contains NaN or infinite values",
        r"drop or fix the examples",
    ),
    (
        "ddpm_step t=0",
        lambda: dif.ddpm_step(KEY, schedule(), np.zeros((2, 4, 4, 1), F32), 0, np.zeros((2, 4, 4, 1), F32)),
        r"t must lie in 1\.\.10",
        r"draw timesteps with sample_timesteps",
    ),
    (
        "ddim_step eta<0",
        lambda: dif.ddim_step(
            KEY, schedule(), np.zeros((2, 4, 4, 1), F32), 5, 4, np.zeros((2, 4, 4, 1), F32), eta=-1.0
        ),
        r"eta must be >= 0",
        r"pass e\.g\. eta=0\.0",
    ),
    (
        "guided_eps label out of range",
        lambda: dif.guided_eps(
            eps_fn, np.zeros((2, 4, 4, 1), F32), 3, np.array([0, 10]), 3.0, num_classes=10
        ),
        r"labels must lie in 0\.\.9 \(class indices\), got values in 0\.\.10",
        r"fix or drop the out-of-range labels",
    ),
    (
        "make_loss label_drop=2",
        lambda: dif.make_loss(lambda *a, **k: None, schedule(), conditional=True, label_drop=2.0),
        r"label drop probability must lie in \[0, 1\], got 2\.0",
        r"pass e\.g\. label_drop=0\.1",
    ),
    (
        "sample_timesteps n=0",
        lambda: dif.sample_timesteps(KEY, schedule(), n=0),
        r"n must be an int >= 1 \(static\), got 0",
        r"pass e\.g\. n=len\(x0\)",
    ),
    (
        "linear_schedule T=1",
        lambda: dif.linear_schedule(1),
        r"num_steps must be an int >= 2 \(static\), got 1",
        r"pass e\.g\. num_steps=1000",
    ),
    (
        "schedule_from_betas beta=1",
        lambda: dif.schedule_from_betas(np.array([0.1, 1.0])),
        r"every beta must lie in \(0, 1\), got beta_2 = 1\.0",
        r"must be positive and below one",
    ),
    (
        "ddim_sample num_steps > T",
        lambda: dif.ddim_sample(KEY, eps_fn, schedule(), shape=(2, 4, 4, 1), num_steps=11),
        r"num_steps must lie in 1\.\.T = 1\.\.10",
        r"pass e\.g\. num_steps=50",
    ),
    (
        "ddpm_sample NaN x_init",
        lambda: dif.ddpm_sample(
            KEY, eps_fn, schedule(), shape=(2, 4, 4, 1), x_init=with_nan(np.zeros((2, 4, 4, 1)))
        ),
        r"x_init contains NaN or infinite values",
        r"drop or fix the examples",
    ),
    (
        "guided without labels",
        lambda: dif.guided(eps_fn, None, 3.0),
        r"gamma \(classifier-free guidance\) needs labels",
        r"pass diffusion\.guided\(eps_fn, labels, gamma\)",
    ),
    # --- unet ---------------------------------------------------------------------------------------
    (
        "UNet image side not /4",
        lambda: unet_call(np.zeros((2, 6, 6, 1), F32)),
        r"image height and width must be divisible by 4",
        r"pad or crop the images",
    ),
    (
        "UNet label out of range",
        lambda: unet_call(np.zeros((2, 8, 8, 1), F32), labels=np.array([0, 2]), num_labels=2),
        r"labels must lie in 0\.\.1, got values in 0\.\.2",
        r"label_mask=0",
    ),
    (
        "UNet labels without embedding",
        lambda: unet_call(np.zeros((2, 8, 8, 1), F32), labels=np.array([0, 1])),
        r"the model has no label embedding",
        r"UNet\(num_labels=10\) or pass labels=None",
    ),
]


@pytest.mark.parametrize(("call", "problem", "fix"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_raises_one_value_error_naming_problem_and_fix(call, problem, fix):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert re.search(problem, message), f"problem {problem!r} not named in: {message}"
    assert re.search(fix, message), f"fix {fix!r} not named in: {message}"
    # raised by the library's own checks, not from inside JAX: the innermost frame is dlx_jax code
    origin = info.traceback[-1].path
    assert "dlx_jax" in str(origin) and "site-packages" not in str(origin), origin


def test_the_matrix_covers_every_library_family():
    families = {name.split()[0].split(".")[0] for name, *_ in CASES}
    ids = [name for name, *_ in CASES]
    assert len(set(ids)) == len(ids) >= 30
    for prefix in (
        "normal",
        "mvn",
        "init_params",
        "fit",
        "softmax",
        "cnn",
        "vae",
        "hvae",
        "bounds",
        "frechet",
    ):
        assert any(f.startswith(prefix) for f in families), prefix
    assert {"q_sample", "ddpm_step", "UNet"} <= families


def test_k_zero_message_does_not_suggest_fewer_components():
    with pytest.raises(ValueError, match=r"must be >= 1") as info:
        mixture.init_params(KEY, duplicates(), k=0)
    assert "fewer components" not in str(info.value)


def test_non_symmetric_covariance_under_jit_is_read_as_its_symmetric_part():
    """Documented in distributions: jit cannot check symmetry; the Cholesky reads (Σ + Σᵀ)/2."""
    x, mean = np.array([[0.3, -0.2], [1.0, 0.5]], F32), np.zeros(2, F32)
    cov = np.array([[1.0, 0.6], [0.2, 2.0]], F32)
    jitted = jax.jit(D.mvn_logpdf)(x, mean, cov)
    assert np.isfinite(np.asarray(jitted)).all()
    np.testing.assert_array_equal(jitted, jax.jit(D.mvn_logpdf)(x, mean, (cov + cov.T) / 2))
    not_pd = np.array([[1.0, 2.0], [2.0, 1.0]], F32)
    assert np.isnan(np.asarray(jax.jit(D.mvn_logpdf)(x, mean, not_pd))).all()


def test_out_of_range_labels_under_plain_jit_are_documented_not_checked():
    """Under jit values cannot be checked: a label >= k gives NaN and -1 a wrong finite loss (as the
    docstring of nn.softmax_cross_entropy says); checked mode below turns both into errors."""
    logits = np.array([[0.0, 1.0, 2.0]], F32)
    loss = jax.jit(nn.softmax_cross_entropy)
    assert np.isnan(float(loss(logits, np.array([3]))))
    assert np.isfinite(float(loss(logits, np.array([-1]))))


# --- the opt-in checked mode ---------------------------------------------------------------------------


def test_checked_cnn_loss_raises_for_out_of_range_labels_inside_jit():
    loss = dlx_jax.checked(lambda p, x, y, m: cnn.loss(p, x, y, dropout_mask=m))
    mask = np.ones((2, 1600), F32)
    assert np.isfinite(float(loss(cnn_params(), images(0.5), np.array([0, 9]), mask)))
    for bad in ([10, 1], [-1, 1]):
        with pytest.raises(
            ValueError, match=r"labels y must lie in 0\.\.9 .*fix or drop the out-of-range labels"
        ):
            loss(cnn_params(), images(0.5), np.array(bad), mask)
    with pytest.raises(ValueError, match=r"images has values outside \[0, 1\].*divide 0-255 images by 255"):
        loss(cnn_params(), images(255.0), np.array([0, 1]), mask)


def test_checked_mvn_logpdf_raises_for_bad_covariances_inside_jit():
    logpdf = dlx_jax.checked(D.mvn_logpdf)
    x, mean = np.zeros((3, 2), F32), np.zeros(2, F32)
    np.testing.assert_allclose(
        logpdf(x, mean, np.eye(2, dtype=F32)), jax.jit(D.mvn_logpdf)(x, mean, np.eye(2, dtype=F32))
    )
    bad = {
        r"cov is not symmetric.*\(cov \+ cov\.T\) / 2": [[1.0, 0.5], [0.0, 1.0]],
        r"cov is not positive definite.*add a small ridge": [[1.0, 2.0], [2.0, 1.0]],
        r"cov contains NaN or infinite values.*check how": [[np.inf, 0.0], [0.0, 1.0]],
    }
    for pattern, cov in bad.items():
        with pytest.raises(ValueError, match=pattern):
            logpdf(x, mean, np.array(cov, F32))
    with pytest.raises(ValueError, match=r"mean contains NaN or infinite values"):
        logpdf(x, np.array([np.nan, 0.0], F32), np.eye(2, dtype=F32))


def test_checked_em_fit_names_reg_covar_inside_jit():
    x = duplicates()
    init = mixture.init_params(KEY, x, k=3)
    fit = dlx_jax.checked(lambda x, p, reg: mixture.fit(x, p, reg_covar=reg))
    params, _ = fit(x, init, 1e-6)
    assert all(np.isfinite(np.asarray(a)).all() for a in params)
    with pytest.raises(ValueError, match=r"non-finite parameters.*" + REG_FIX):
        fit(x, init, 0.0)


def test_checked_diffusion_timesteps_and_static_arguments():
    noised = dlx_jax.checked(dif.q_sample, static_argnames=())
    x0 = np.zeros((2, 4, 4, 1), F32)
    assert noised(KEY, schedule(), x0, np.array([0, 10]))[0].shape == x0.shape
    with pytest.raises(ValueError, match=r"t must lie in 0\.\.10.*sample_timesteps"):
        noised(KEY, schedule(), x0, np.array([1, 11]))
    iwae = dlx_jax.checked(vae.iwae_bound, static_argnames="num_samples")
    assert iwae(KEY, vae_params(), pixels(0.5), num_samples=3).shape == (2,)
    with pytest.raises(ValueError, match=r"x has values outside \[0, 1\]"):
        iwae(KEY, vae_params(), pixels(255.0), num_samples=3)
