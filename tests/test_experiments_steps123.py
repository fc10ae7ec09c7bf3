"""Experiments step01_normal, step02_mle, step03_mvn on quick configs: metrics, files, --data errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from dlx_jax.data import (
    load_book_height_weight,
    load_book_heights,
    load_galton_father_son,
    load_galton_heights,
)
from experiments import _book, step01_normal, step02_mle, step03_mvn
from experiments._cli import cli
from tests.helpers import RTOL_BOOK_F64, RTOL_NUMPY_CONTRACT, SAMPLE_N_SE


def _files(path):
    return sorted(p.name for p in path.iterdir() if p.name != ".outputs.json")  # the outputs manifest


def test_step01_normal_quick(tmp_path):
    m = step01_normal.main(replace(step01_normal.Config(), out=str(tmp_path), quick=True))
    assert m["pdf_at_0"] == pytest.approx(1 / np.sqrt(2 * np.pi), rel=1e-6)
    assert m["clt_n"] == [1, 2, 4, 10]
    n = m["trials"]
    for kind in ("mean", "sum"):
        means, stds = np.array(m[f"clt_{kind}_sample_means"]), np.array(m[f"clt_{kind}_sample_stds"])
        theory_m, theory_s = np.array(m[f"clt_{kind}_theory_means"]), np.array(m[f"clt_{kind}_theory_stds"])
        assert np.all(np.abs(means - theory_m) < SAMPLE_N_SE * theory_s / np.sqrt(n))
        assert np.all(np.abs(stds / theory_s - 1) < SAMPLE_N_SE * np.sqrt(1 / (2 * n)) * 2)
    np.testing.assert_allclose(m["clt_sum_theory_stds"], np.sqrt(np.array([1, 2, 4, 10]) / 12))
    np.testing.assert_allclose(m["clt_mean_theory_stds"], np.sqrt(1 / (12 * np.array([1, 2, 4, 10]))))
    ks = m["clt_sum_ks"]
    assert ks[-1] < ks[0] and ks[0] > 0.04  # a uniform is visibly not normal; a sum of 10 nearly is
    assert ks == pytest.approx(m["clt_mean_ks"], abs=1e-5)  # mean = sum / N: same standardised shape
    # the book's sample_sum.py: the sum of N = 5 uniforms against N(5/2, 5/12)
    sd5 = np.sqrt(5 / 12)
    assert (m["clt_sum5_theory_mean"], m["clt_sum5_theory_std"]) == (2.5, pytest.approx(sd5))
    assert abs(m["clt_sum5_mean"] - 2.5) < SAMPLE_N_SE * sd5 / np.sqrt(n)
    assert abs(m["clt_sum5_std"] / sd5 - 1) < SAMPLE_N_SE * np.sqrt(1 / (2 * n)) * 2
    assert _files(tmp_path) == [
        "clt_mean.png",
        "clt_sum.png",
        "clt_sum_n5.png",
        "config.json",
        "metrics.json",
        "mu_sigma_sweep.png",
        "normal_pdf.png",
    ]
    assert json.loads((tmp_path / "metrics.json").read_text())["pdf_at_0"] == m["pdf_at_0"]


def test_step02_mle_default_data_is_the_books(tmp_path):
    m = step02_mle.main(replace(step02_mle.Config(), out=str(tmp_path), quick=True, plots=False))
    x = load_book_heights()
    assert m["n"] == x.size == 25000 and m["data"] == "the book's height.txt (cm)"
    assert step02_mle.Config().data == "book"
    assert m["mu"] == pytest.approx(x.mean(), rel=RTOL_NUMPY_CONTRACT)
    assert m["sigma"] == pytest.approx(x.std(), rel=RTOL_NUMPY_CONTRACT)
    ref = stats.norm(x.mean(), x.std())
    assert m["p_le_a"] == pytest.approx(ref.cdf(160.0), rel=RTOL_NUMPY_CONTRACT)
    assert m["p_gt_b"] == pytest.approx(ref.sf(180.0), rel=RTOL_NUMPY_CONTRACT)
    # the book's printed P(x <= 160) and P(x > 180) (notebook 02), to its digits up to a few ulps
    assert m["p_le_a"] == pytest.approx(_book.PRINTED["step02_p_le_160"], rel=RTOL_BOOK_F64)
    assert m["p_gt_b"] == pytest.approx(_book.PRINTED["step02_p_gt_180"], rel=RTOL_BOOK_F64)


def test_step02_mle_galton_by_name(tmp_path):
    m = step02_mle.main(replace(step02_mle.Config(), out=str(tmp_path), quick=True, data="galton"))
    x = load_galton_heights()
    assert m["n"] == x.size == 481
    assert m["mu"] == pytest.approx(x.mean(), rel=RTOL_NUMPY_CONTRACT)
    assert m["sigma"] == pytest.approx(x.std(), rel=RTOL_NUMPY_CONTRACT)
    assert m["sigma_unbiased"] == pytest.approx(x.std(ddof=1), rel=RTOL_NUMPY_CONTRACT)
    ref = stats.norm(x.mean(), x.std())
    assert m["p_le_a"] == pytest.approx(ref.cdf(160.0), rel=RTOL_NUMPY_CONTRACT)
    assert m["p_gt_b"] == pytest.approx(ref.sf(180.0), rel=RTOL_NUMPY_CONTRACT)
    assert m["mean_log_likelihood"] == pytest.approx(ref.logpdf(x).mean(), rel=RTOL_NUMPY_CONTRACT)
    assert abs(m["generated_mean"] - m["mu"]) < SAMPLE_N_SE * m["sigma"] / np.sqrt(m["n_generated"])
    assert _files(tmp_path) == [
        "cdf_probabilities.png",
        "config.json",
        "generated_vs_original.png",
        "metrics.json",
        "mle_fit.png",
    ]


def test_step02_mle_data_file_matches_numpy(tmp_path):
    rng = np.random.default_rng(3)
    heights = rng.normal(172.7, 4.8, size=257)
    data = tmp_path / "height.txt"
    data.write_text("\n".join(f"{h:.15g}" for h in heights) + "\n")  # the book's height.txt layout
    out = tmp_path / "out"
    m = step02_mle.main(
        replace(step02_mle.Config(), out=str(out), quick=True, plots=False, data=str(data), a=165.0, b=175.0)
    )
    x = np.loadtxt(data)
    assert m["n"] == 257
    assert m["mu"] == pytest.approx(np.mean(x), rel=RTOL_NUMPY_CONTRACT)
    assert m["sigma"] == pytest.approx(np.std(x), rel=RTOL_NUMPY_CONTRACT)
    assert m["sigma_unbiased"] == pytest.approx(np.std(x, ddof=1), rel=RTOL_NUMPY_CONTRACT)
    assert m["p_le_a"] == pytest.approx(stats.norm(x.mean(), x.std()).cdf(165.0), rel=RTOL_NUMPY_CONTRACT)
    assert (m["a"], m["b"]) == (165.0, 175.0)
    assert _files(out) == ["config.json", "metrics.json"]
    assert json.loads((out / "config.json").read_text())["data"] == str(data)


def test_step03_mvn_default_data_is_the_books(tmp_path):
    m = step03_mvn.main(replace(step03_mvn.Config(), out=str(tmp_path), quick=True, plots=False))
    x = load_book_height_weight()
    assert m["n"] == 25000 and m["data"] == "the book's height_weight.txt"
    assert step03_mvn.Config().data == "book"
    np.testing.assert_allclose(m["mean"], x.mean(0), rtol=RTOL_NUMPY_CONTRACT)
    np.testing.assert_allclose(m["cov"], np.cov(x, rowvar=False, ddof=0), rtol=RTOL_NUMPY_CONTRACT)
    # the book's mle.py: np.cov, ddof 1
    np.testing.assert_allclose(m["cov_unbiased"], np.cov(x, rowvar=False), rtol=RTOL_NUMPY_CONTRACT)
    # numpy_matrix.py's printed values
    assert m["book_mvn_pdf"] == pytest.approx(_book.PRINTED["step03_mvn_pdf"], rel=RTOL_BOOK_F64)
    assert m["book_det"] == pytest.approx(_book.PRINTED["step03_det"], rel=RTOL_BOOK_F64)


def test_step03_mvn_galton_by_name(tmp_path):
    m = step03_mvn.main(replace(step03_mvn.Config(), out=str(tmp_path), quick=True, data="galton"))
    x = load_galton_father_son()
    assert m["n"] == 481
    np.testing.assert_allclose(m["mean"], x.mean(0), rtol=RTOL_NUMPY_CONTRACT)
    np.testing.assert_allclose(m["cov"], np.cov(x, rowvar=False, ddof=0), rtol=RTOL_NUMPY_CONTRACT)
    np.testing.assert_allclose(m["cov_unbiased"], np.cov(x, rowvar=False), rtol=RTOL_NUMPY_CONTRACT)
    ref = stats.multivariate_normal(x.mean(0), np.cov(x, rowvar=False, ddof=0))
    assert m["mean_log_likelihood"] == pytest.approx(ref.logpdf(x).mean(), rel=RTOL_NUMPY_CONTRACT)
    book = stats.multivariate_normal(step03_mvn.BOOK_MU, step03_mvn.BOOK_COV)
    assert m["book_pdf_at_mean"] == pytest.approx(book.pdf(step03_mvn.BOOK_MU), rel=1e-5)  # float32 grid path
    assert 0.2 < m["correlation"] < 0.6  # fathers and sons: the correlation Galton found
    assert _files(tmp_path) == [
        "book_plot_3d.png",
        "config.json",
        "generated_vs_original.png",
        "metrics.json",
        "mle_contour.png",
        "mle_surface_book.png",
        "mvn_surface_contour.png",
    ]


def test_step03_mvn_data_file_matches_numpy(tmp_path):
    rng = np.random.default_rng(4)
    xy = rng.multivariate_normal([170.0, 60.0], [[30.0, 12.0], [12.0, 40.0]], size=90)
    data = tmp_path / "hw.csv"
    data.write_text("height,weight\n" + "\n".join(f"{a:.15g},{b:.15g}" for a, b in xy) + "\n")
    out = tmp_path / "out"
    m = step03_mvn.main(replace(step03_mvn.Config(), out=str(out), quick=True, plots=False, data=str(data)))
    x = np.loadtxt(data, delimiter=",", skiprows=1)
    assert m["n"] == 90
    np.testing.assert_allclose(m["mean"], x.mean(0), rtol=RTOL_NUMPY_CONTRACT)
    np.testing.assert_allclose(m["cov"], np.cov(x, rowvar=False, ddof=0), rtol=RTOL_NUMPY_CONTRACT)
    np.testing.assert_allclose(m["cov_unbiased"], np.cov(x, rowvar=False), rtol=RTOL_NUMPY_CONTRACT)
    assert _files(out) == ["config.json", "metrics.json"]


# case: (one-column text for step 2, two-column text for step 3, expected message)
BAD_FILES = {
    "empty": ("", "", "holds no numbers"),
    "blank_and_comments": ("\n# nothing\n\n", "\n# nothing\n\n", "holds no numbers"),
    "ragged": ("1\n2 3\n", "1 2\n3 4\n5\n", "ragged row"),
    "non_numeric": ("1\nfour\n", "1 2\n3 four\n", "non-numeric value"),
    "nan": ("1\nnan\n", "1 2\nnan 4\n", "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
@pytest.mark.parametrize("step", [step02_mle, step03_mvn], ids=["step02", "step03"])
def test_bad_data_file_raises_before_any_output(step, case, tmp_path):
    one_col, two_col, match = BAD_FILES[case]
    text = one_col if step is step02_mle else two_col
    data = tmp_path / "bad.txt"
    data.write_text(text)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        step.main(replace(step.Config(), out=str(out), quick=True, data=str(data)))
    assert not out.exists()
    assert _files(tmp_path) == ["bad.txt"]  # no staging folder left behind either


@pytest.mark.parametrize(
    ("step", "text", "match"),
    [
        (step02_mle, "1 2\n3 4\n", "has 2 columns but this step needs 1"),
        (step03_mvn, "1\n2\n3\n", "has 1 columns but this step needs 2"),
        (step03_mvn, "1 2 3\n4 5 6\n", "has 3 columns but this step needs 2"),
        (step02_mle, "170\n", "at least 2"),
        (step03_mvn, "1 2\n3 4\n", "at least 3"),
    ],
)
def test_wrong_column_count_or_too_few_rows(step, text, match, tmp_path):
    data = tmp_path / "bad.txt"
    data.write_text(text)
    with pytest.raises(ValueError, match=match):
        step.main(replace(step.Config(), out=str(tmp_path / "out"), quick=True, data=str(data)))
    assert not (tmp_path / "out").exists()


def test_degenerate_2d_data_is_a_clear_error(tmp_path):
    data = tmp_path / "line.txt"
    data.write_text("1 2\n2 4\n3 6\n4 8\n")  # perfectly collinear: singular covariance
    with pytest.raises(ValueError, match="not positive definite"):
        step03_mvn.main(replace(step03_mvn.Config(), out=str(tmp_path / "out"), quick=True, data=str(data)))
    assert not (tmp_path / "out").exists()


def test_cli_flags_and_error_exit_code(tmp_path, capsys):
    out = tmp_path / "s2"
    code = cli(
        step02_mle.Config,
        step02_mle.main,
        ["--out", str(out), "--seed", "3", "--quick", "--no-plots", "--a", "150"],
    )
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert (
        config["seed"] == 3 and config["quick"] is True and config["plots"] is False and config["a"] == 150.0
    )
    assert "mu=" in capsys.readouterr().out
    code = cli(
        step03_mvn.Config,
        step03_mvn.main,
        ["--out", str(tmp_path / "s3"), "--data", str(tmp_path / "missing.txt")],
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "s3").exists()


def test_bad_config_values_raise(tmp_path):
    with pytest.raises(ValueError, match="--trials must be >= 10"):
        step01_normal.main(replace(step01_normal.Config(), out=str(tmp_path / "o"), trials=1))
    with pytest.raises(ValueError, match="--n-generated must be >= 1"):
        step02_mle.main(replace(step02_mle.Config(), out=str(tmp_path / "o"), n_generated=0))
    with pytest.raises(ValueError, match="--grid-size must be >= 5"):
        step03_mvn.main(replace(step03_mvn.Config(), out=str(tmp_path / "o"), grid_size=2))
    assert not (tmp_path / "o").exists()
