"""Steps 4-5 run on tiny configs and write the contract's metrics and figures."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from experiments import _book, step04_gmm, step05_em
from tests.helpers import ATOL_BOOK_3DP, RTOL_BOOK_F64


def test_step04(tmp_path):
    metrics = step04_gmm.main(replace(step04_gmm.Config(), out=str(tmp_path), quick=True, n_samples=500))
    assert metrics["n_samples"] == 500
    assert 0.55 < metrics["sample_fraction_component_1"] < 0.75  # 0.65 ± 4.7 sd
    assert metrics["mean_log_likelihood_data"] > -5.0
    for name in ("metrics.json", "config.json", "gmm_density.png", "gmm_samples.png"):
        assert (tmp_path / name).is_file()


def test_step05_book_numbers(tmp_path):
    metrics = step05_em.main(replace(step05_em.Config(), out=str(tmp_path), quick=True))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["n_iter"] == 9
    np.testing.assert_array_equal(
        np.round(on_disk["log_likelihood_trace"], 3),
        [-16.538, -4.415, -4.357, -4.302, -4.245, -4.2, -4.164, -4.156, -4.155, -4.155],
    )
    assert round(on_disk["exact_log_likelihood_trace"][0], 3) == -137.488
    assert len(on_disk["exact_log_likelihood_trace"]) == 10
    np.testing.assert_allclose(on_disk["weights"], [0.3560, 0.6440], atol=ATOL_BOOK_3DP)
    np.testing.assert_allclose(on_disk["means"], [[2.037, 54.480], [4.290, 79.970]], atol=ATOL_BOOK_3DP)
    assert np.asarray(on_disk["covariances"]).shape == (2, 2, 2)
    assert metrics["converged"] is True
    # notebook 05's KL cell
    np.testing.assert_allclose(on_disk["book_kl"], _book.PRINTED["step05_kl"], rtol=RTOL_BOOK_F64, atol=0.0)
    for name in ("em_contour.png", "log_likelihood.png", "em_samples.png"):
        assert (tmp_path / name).is_file()


def test_step05_restarts_and_bad_data(tmp_path):
    metrics = step05_em.main(
        replace(step05_em.Config(), out=str(tmp_path / "r"), quick=True, plots=False, restarts=4)
    )
    assert metrics["final_exact_log_likelihood"] == pytest.approx(-4.1554, abs=1e-3)
    assert len(metrics["restart_final_log_likelihoods"]) == 4
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("1 2\n3\n")
    with pytest.raises(ValueError, match="ragged"):
        step05_em.main(replace(step05_em.Config(), out=str(tmp_path / "bad"), data=str(ragged)))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="restarts"):
        step05_em.main(replace(step05_em.Config(), out=str(tmp_path / "bad"), restarts=-1))
