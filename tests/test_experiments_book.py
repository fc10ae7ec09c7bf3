"""The book's printed numbers from the project's default runs and functions (issue 15), the book's
data files, and the step-by-step noising of step 9 against the closed form (experiments._book,
experiments._book_noising)."""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx_jax import data, diffusion
from experiments import _book, _book_noising, step02_mle, step03_mvn
from tests.helpers import RTOL_BOOK_F64, SAMPLE_N_SE

PRINTED = _book.PRINTED


@pytest.mark.parametrize(
    ("name", "sha256"),
    [
        ("height.txt", "ffd6d443e89b397f7d1282e81e699382de831ca9e1c1d65513afbb8123e9fed7"),
        ("height_weight.txt", "a149dacbc33240e398020604e2d1f19b11fa9a5bfaccdde3f1c5df98458fe3a0"),
        ("flower.png", "69530c4e2bae50a0fcebba9ca668845eab99002c363f955ef0d843cc2947eba8"),
    ],
)
def test_vendored_book_files_are_the_books(name, sha256):
    assert hashlib.sha256((data.DATASETS_DIR / name).read_bytes()).hexdigest() == sha256
    assert f"`{name}`" in (data.DATASETS_DIR / "PROVENANCE.md").read_text()


def test_book_loaders_shapes():
    assert data.load_book_heights().shape == PRINTED["step02_shape"]
    assert data.load_book_height_weight().shape == PRINTED["step03_shape"]
    flower = data.load_flower()
    assert flower.shape == PRINTED["step09_flower_shape"] and flower.dtype == np.float32
    assert 0.0 <= flower.min() and flower.max() <= 1.0


def test_step03_numpy_matrix_values():
    v = _book.numpy_matrix_values()
    assert v["book_dot"] == PRINTED["step03_dot"]
    assert v["book_matmul"] == [list(r) for r in PRINTED["step03_matmul"]]
    assert v["book_det"] == pytest.approx(PRINTED["step03_det"], rel=RTOL_BOOK_F64)  # −2 up to LU rounding
    np.testing.assert_allclose(v["book_inverse"], PRINTED["step03_inverse"], rtol=RTOL_BOOK_F64)
    assert v["book_mvn_pdf"] == pytest.approx(PRINTED["step03_mvn_pdf"], rel=RTOL_BOOK_F64)


def test_step05_kl_cell():
    np.testing.assert_allclose(_book.kl_values(), PRINTED["step05_kl"], rtol=RTOL_BOOK_F64, atol=0.0)
    assert _book.kl_values()[2] == 0.0


def test_categorical_kl_zero_mass_and_broadcast():
    p = jnp.array([1.0, 0.0])
    assert float(_book.categorical_kl(p, jnp.array([0.5, 0.5]))) == pytest.approx(np.log(2.0))
    assert _book.categorical_kl(p, jnp.full((4, 2), 0.5)).shape == (4,)


# ------------------------------------------------------------------------------ step 9's noising

SCHEDULE = diffusion.linear_schedule(1000)


def test_step_by_step_noising_equals_the_closed_form_in_distribution():
    """x_t from t single steps ~ N(√ᾱ_t x0, (1 − ᾱ_t) I): moments over 16 keys × 768 pixels (every
    4th row and column of the flower: the chain acts per pixel, so a crop loses nothing but time)."""
    x0 = jnp.asarray(data.load_flower()[::4, ::4])
    keys = jax.random.split(jax.random.key(0), 16)
    run = jax.jit(jax.vmap(lambda k: _book_noising.noise_step_by_step(k, SCHEDULE, x0, record_every=100)))
    stepwise = run(keys)  # (16, 11, 16, 16, 3)
    assert stepwise.shape == (16, 11, 16, 16, 3)
    np.testing.assert_array_equal(stepwise[:, 0], np.broadcast_to(x0, (16, *x0.shape)))
    ts = jnp.arange(100, 1001, 100)
    z = np.asarray(jax.vmap(lambda xs: _book_noising.standardized(SCHEDULE, x0, xs, ts))(stepwise[:, 1:]))
    n = z[:, 0].size
    z_by_t = z.transpose(1, 0, 2, 3, 4).reshape(len(ts), n)
    assert np.all(np.abs(z_by_t.mean(1)) < SAMPLE_N_SE / np.sqrt(n))  # mean √ᾱ_t x0
    assert np.all(np.abs(z_by_t.var(1) - 1) < SAMPLE_N_SE * np.sqrt(2 / n))  # variance 1 − ᾱ_t
    # per pixel over keys: the mean follows x0 (a correlation the shift alone would not give)
    closed = jax.vmap(lambda k: _book_noising.closed_form(k, SCHEDULE, x0, ts))(keys)
    for chain in (stepwise[:, 1], closed[:, 0]):  # t = 100: still mostly the photo
        pixel_mean = np.asarray(chain.mean(0)).ravel()
        assert np.corrcoef(pixel_mean, np.asarray(x0).ravel())[0, 1] > 0.9
    # the two are independent draws of one distribution: their t = 100 pixel means agree
    diff = np.asarray(stepwise[:, 1].mean(0) - closed[:, 0].mean(0)).ravel()
    se = np.sqrt(2 * float(SCHEDULE.one_minus_alpha_bars[100]) / 16)
    assert abs(diff.mean()) < SAMPLE_N_SE * se / np.sqrt(diff.size)
    assert abs(diff.std() / se - 1) < SAMPLE_N_SE * np.sqrt(1 / (2 * diff.size))


def test_noise_step_by_step_one_step_is_the_books_update():
    x0 = jnp.linspace(-1.0, 1.0, 6)
    sched = diffusion.linear_schedule(2)
    key = jax.random.key(3)
    got = _book_noising.noise_step_by_step(key, sched, x0, record_every=1)
    eps1 = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
    x1 = jnp.sqrt(1 - sched.betas[1]) * x0 + jnp.sqrt(sched.betas[1]) * eps1
    np.testing.assert_allclose(got[1], x1, rtol=1e-6)
    with pytest.raises(ValueError, match="record_every must divide"):
        _book_noising.noise_step_by_step(key, SCHEDULE, x0, record_every=300)


def test_run_metrics_figure_and_photos(tmp_path):
    """``python -m experiments._book_noising`` (the figure step 9 also draws) and its metrics."""
    metrics = _book_noising.main(_book_noising.Config(out=str(tmp_path)))
    assert (tmp_path / "book_noising.png").is_file() and (tmp_path / "metrics.json").is_file()
    assert metrics["noising_photo_shape"] == list(PRINTED["step09_flower_shape"])
    assert metrics["noising_t"] == list(range(100, 1001, 100))
    n = 64 * 64 * 3  # one draw of every pixel per t
    for kind in ("stepwise", "closed_form"):
        assert np.all(np.abs(metrics[f"noising_{kind}_z_mean"]) < SAMPLE_N_SE / np.sqrt(n))
        assert np.all(np.abs(np.array(metrics[f"noising_{kind}_z_std"]) - 1) < SAMPLE_N_SE / np.sqrt(2 * n))
    assert _book_noising.load_photo("grace-hopper").shape == (64, 64, 3)
    with pytest.raises(ValueError, match="unknown photo 'rose'; choose one of flower, grace-hopper"):
        _book_noising.load_photo("rose")


def test_data_names_and_a_missing_file(tmp_path):
    assert set(step02_mle.DATASETS) == set(step03_mvn.DATASETS) == {"book", "galton"}
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(
        FileNotFoundError, match=r"does not exist.*or one of the data set names: book, galton"
    ):
        _book.load_file(missing, ncols=1, names=step02_mle.DATASETS)
