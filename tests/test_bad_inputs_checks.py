"""Hostile inputs for the shared checks, the library and ``--data`` files: each gives ONE
``ValueError`` (or an ``error:`` line on the command line) that names the problem and the fix.

Also: every check lives once, in :mod:`dlx_jax._checks` (``is_concrete``, the label range, the
integer options), and ``data.load_table`` reads a file line by line (peak memory about the size
of the result, not a multiple of the file), the same numbers as before for valid files.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import sys
import threading
import tracemalloc
from pathlib import Path

import jax
import numpy as np
import pytest

from dlx_jax import _checks, cnn, data, distributions, hvae, mixture, nn, vae
from dlx_jax.mixture import _model as mixture_model
from experiments import step02_mle, step03_mvn
from experiments._cli import cli

KEY = jax.random.key(0)
F32 = np.float32
DECIMAL = r"decimal commas are not supported: write 170\.5, not 170,5"


def _raises(call, problem: str, fix: str) -> ValueError:
    """``call()`` raises one ValueError naming ``problem`` and ``fix``, from the library's own code."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert re.search(problem, message), f"problem {problem!r} not named in: {message}"
    assert re.search(fix, message), f"fix {fix!r} not named in: {message}"
    origin = str(info.traceback[-1].path)
    assert "dlx_jax" in origin and "site-packages" not in origin, origin
    return info.value


def _file(tmp: Path, content: str, name: str = "d.txt") -> Path:
    path = tmp / name
    path.write_text(content)
    return path


# --- one home for every check ------------------------------------------------------------------------


def test_is_concrete_is_defined_once():
    assert distributions.is_concrete is _checks.is_concrete
    assert mixture_model.is_concrete is _checks.is_concrete
    assert not hasattr(distributions, "_is_concrete") and not hasattr(mixture_model, "_is_concrete")


def test_cnn_labels_use_the_shared_label_check():
    assert not hasattr(cnn, "_check_labels") or "check_class_labels" in cnn._check_labels.__code__.co_names


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1, True), (np.int64(3), True), (0, False), (-2, False), (2.0, False), (True, False), ("3", False)],
)
def test_check_positive_int(value, ok):
    if ok:
        _checks.check_positive_int("n", value, fix="pass e.g. n=3")
    else:
        _raises(
            lambda: _checks.check_positive_int("n", value, fix="pass e.g. n=3"),
            r"n must be an integer >= 1",
            "n=3",
        )


def test_check_positive_int_wording():
    _raises(
        lambda: _checks.check_positive_int("k", -1, minimum=0, static=True, fix="pass k=0"),
        r"k must be a non-negative int \(static\), got -1",
        r"pass k=0",
    )
    _raises(
        lambda: _checks.check_positive_int("T", 1, minimum=2, static=True, fix="pass T=1000"),
        r"T must be an int >= 2 \(static\), got 1",
        r"pass T=1000",
    )


# --- library: empty batches and negative shapes -----------------------------------------------------


@functools.cache
def _cnn_params() -> dict:
    return cnn.init_params(KEY)


EMPTY_IMAGES = np.zeros((0, 28, 28, 1), F32)
NO_LABELS = np.zeros((0,), np.int32)

LIBRARY_CASES = {
    "cnn.loss empty batch": (
        lambda: cnn.loss(_cnn_params(), EMPTY_IMAGES, NO_LABELS, dropout_mask=np.ones((0, 1600), F32)),
        r"images x is an empty batch \(0 images\)",
        r"pass at least one image",
    ),
    "cnn.loss empty batch under jit": (
        lambda: jax.jit(cnn.loss)(
            _cnn_params(), EMPTY_IMAGES, NO_LABELS, dropout_mask=np.ones((0, 1600), F32)
        ),
        r"empty batch",
        r"pass at least one image",
    ),
    "cnn.accuracy empty batch": (
        lambda: cnn.accuracy(_cnn_params(), EMPTY_IMAGES, NO_LABELS),
        r"a mean over no images is undefined",
        r"pass at least one image",
    ),
    "cnn.evaluate empty batch": (
        lambda: cnn.evaluate(_cnn_params(), EMPTY_IMAGES, NO_LABELS),
        r"empty batch",
        r"pass at least one image",
    ),
    "softmax_cross_entropy empty batch": (
        lambda: nn.softmax_cross_entropy(np.zeros((0, 3), F32), NO_LABELS),
        r"logits is an empty batch \(0 examples\)",
        r"pass at least one",
    ),
    "vae.book_loss empty batch": (
        lambda: vae.book_loss(
            KEY, vae.init_params(KEY, input_dim=4, hidden_dim=3, latent_dim=2), np.zeros((0, 4), F32)
        ),
        r"x is an empty batch",
        r"pass at least one",
    ),
    "hvae.book_loss empty batch": (
        lambda: hvae.book_loss(
            KEY, hvae.init_params(KEY, input_dim=4, hidden_dim=3, latent_dim=2), np.zeros((0, 4), F32)
        ),
        r"x is an empty batch",
        r"pass at least one",
    ),
    "sample_normal shape=(-1,)": (
        lambda: distributions.sample_normal(KEY, shape=(-1,)),
        r"shape must be a tuple of non-negative ints \(static\), got \(-1,\)",
        r"pass the number of draws first, e\.g\. shape=\(1000,\)",
    ),
    "sample_normal shape=5": (
        lambda: distributions.sample_normal(KEY, 0.0, 1.0, shape=5),
        r"shape must be a tuple of non-negative ints",
        r"shape=\(1000,\)",
    ),
    "sample_normal shape=(2.5,)": (
        lambda: distributions.sample_normal(KEY, np.zeros(3), 1.0, shape=(2.5,)),
        r"got \(2\.5,\)",
        r"shape=\(1000, 3\)",
    ),
    "sample_mvn shape=(-2,)": (
        lambda: distributions.sample_mvn(KEY, np.zeros(2), np.eye(2), shape=(-2,)),
        r"shape must be a tuple of non-negative ints \(static\), got \(-2,\)",
        r"pass the number of draws first",
    ),
    "sample_gmm n=-1": (
        lambda: mixture.sample_gmm(
            KEY,
            mixture.gmm_params_from_covariances(np.ones(1), np.zeros((1, 2)), np.eye(2)[None]),
            n=-1,
        ),
        r"n must be a non-negative int \(static\), got -1",
        r"pass e\.g\. n=500",
    ),
    "mixture.mean_log_likelihood no points": (
        lambda: mixture.mean_log_likelihood(
            np.zeros((0, 2)),
            mixture.gmm_params_from_covariances(np.ones(1), np.zeros((1, 2)), np.eye(2)[None]),
        ),
        r"x is an empty batch \(0 points\)",
        r"pass at least one data point",
    ),
    "normal_mle ddof=True": (
        lambda: distributions.normal_mle(np.arange(4.0), ddof=True),
        r"ddof must be a non-negative int",
        r"pass ddof=0 \(the MLE\) or ddof=1",
    ),
    "max_pool2d size=0": (
        lambda: nn.max_pool2d(np.zeros((1, 4, 4, 1), F32), size=0),
        r"size must be an int >= 1 \(static\), got 0",
        r"pass e\.g\. size=2",
    ),
    "fit_restarts n_init=2.0": (
        lambda: mixture.fit_restarts(KEY, np.random.default_rng(0).normal(size=(8, 2)), k=2, n_init=2.0),
        r"n_init must be an int >= 1 \(static\), got 2\.0",
        r"pass e\.g\. n_init=10",
    ),
}


@pytest.mark.parametrize("name", sorted(LIBRARY_CASES))
def test_library_bad_input_is_one_clear_error(name):
    _raises(*LIBRARY_CASES[name])


def test_empty_batches_still_work_where_no_mean_is_taken():
    params = _cnn_params()
    assert cnn.apply(params, EMPTY_IMAGES).shape == (0, 10)
    assert cnn.features(params, EMPTY_IMAGES).shape == (0, 1600)
    assert cnn.predict(params, EMPTY_IMAGES).shape == (0,)
    assert distributions.sample_normal(KEY, shape=(0,)).shape == (0,)
    vp = vae.init_params(KEY, input_dim=4, hidden_dim=3, latent_dim=2)
    assert vae.elbo(KEY, vp, np.zeros((0, 4), F32)).shape == (0,)


# --- --data files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "ncols"),
    [
        ("170,5\n165,25\n180,0\n", 1),  # one column asked for: every line is digits,digits
        ("170,5 65,2\n165,0 60,5\n", 2),  # spaces between columns, commas inside them
        ("170,5\t65,2\n", 2),  # a tab-separated spreadsheet export
        ("1,5;2,5\n3,5;4,5\n", 2),  # semicolon-separated, the European CSV
        ('"170,5";"65,2"\n', 2),
        ("1,000 2,000\n", None),  # thousands separators are caught by the same rule
    ],
)
def test_decimal_commas_are_rejected(tmp_path, content, ncols):
    _raises(lambda: data.load_table(_file(tmp_path, content), ncols=ncols), DECIMAL, r"write 170\.5")


def test_decimal_comma_then_a_whole_number_is_a_ragged_row_with_a_hint(tmp_path):
    _raises(lambda: data.load_table(_file(tmp_path, "170,5\n171\n"), ncols=2), r":2: ragged row", r"170\.5")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("170,65\n180,70\n", [[170, 65], [180, 70]]),  # a real two-column CSV of integers still loads
        ("1, 2\n3 ,4\n", [[1, 2], [3, 4]]),
        ("1,2, 3\n", [[1, 2, 3]]),  # commas used as separators (one before a space): not decimal
        ("1.5;2.5\n", [[1.5, 2.5]]),
        ('"3.6","79"\n', [[3.6, 79]]),
    ],
)
def test_comma_separated_columns_still_load(tmp_path, content, expected):
    np.testing.assert_array_equal(data.load_table(_file(tmp_path, content)), expected)


def test_two_column_comma_pairs_load_as_two_columns(tmp_path):
    """``170,5`` read for two columns is a valid CSV row (the docstring says so): not detectable."""
    np.testing.assert_array_equal(
        data.load_table(_file(tmp_path, "170,5\n165,2\n"), ncols=2), [[170, 5], [165, 2]]
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_not_a_regular_file_and_never_blocks(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def load() -> None:
        try:
            data.load_table(fifo)
            result.append(None)
        except BaseException as err:  # noqa: BLE001 (handed to the main thread)
            result.append(err)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():  # unblock the reader before failing
        os.close(os.open(fifo, os.O_RDWR))
        pytest.fail("load_table blocked on a FIFO")
    assert isinstance(result[0], ValueError), result
    assert re.search(r"is not a regular file \(a FIFO, device or socket\)", str(result[0]))
    assert re.search(r"pass a text file of numbers", str(result[0]))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_dev_zero_is_not_a_regular_file():
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    _raises(lambda: data.load_table("/dev/zero"), r"'/dev/zero' is not a regular file", r"pass a text file")


def test_too_many_numbers_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_NUMBERS", 5)
    _raises(
        lambda: data.load_table(_file(tmp_path, "1 2\n3 4\n5 6\n")),
        r"holds more than 5 numbers",
        r"pass a subsample",
    )
    assert data.load_table(_file(tmp_path, "1\n2\n3\n4\n5\n")).shape == (5,)


def test_an_endless_line_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_LINE_CHARS", 64)
    _raises(
        lambda: data.load_table(_file(tmp_path, "1\n" + " ".join(["1.5"] * 40) + "\n")),
        r":2: a line longer than 64 characters",
        r"one sample per line",
    )
    assert data.load_table(_file(tmp_path, "1.5 2.5\n" * 3)).shape == (3, 2)


def _numbers_file(tmp_path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    values = rng.normal(170.0, 6.0, size=(n, 2))
    path = tmp_path / "big.txt"
    with open(path, "w") as f:
        f.write("# height weight\n")
        for a, b in values:
            f.write(f"{float(a)!r},{b:.7g}\r\n")
    return path


def test_load_table_reads_the_same_numbers_as_numpy(tmp_path):
    path = _numbers_file(tmp_path, 20_000)
    np.testing.assert_array_equal(data.load_table(path, ncols=2), np.loadtxt(path, delimiter=","))


def test_load_table_peak_memory_is_about_the_result_not_the_file(tmp_path):
    """tracemalloc counts Python and numpy allocations: deterministic, unlike RSS. The old loader
    (whole text, a list of lines, a list of float lists) peaked at ~20x the file."""
    path = _numbers_file(tmp_path, 100_000)  # ~3.6 MB of text, 1.6 MB of float64
    tracemalloc.start()
    try:
        x = data.load_table(path, ncols=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert x.shape == (100_000, 2)
    assert peak < 1.5 * x.nbytes + 2**20, (peak, x.nbytes, path.stat().st_size)


# --- the same problems on the command line: one error: line ------------------------------------------


@pytest.mark.parametrize(
    ("module", "content", "problem"),
    [
        (step03_mvn, "170,5 65,2\n165,0 60,5\n171,5 70,0\n", DECIMAL),
        (step02_mle, "170,5\n165,25\n180,5\n", DECIMAL),
    ],
)
def test_cli_decimal_commas_are_one_error_line(tmp_path, capsys, module, content, problem):
    code = cli(
        module.Config, module.main, ["--data", str(_file(tmp_path, content)), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert re.search(problem, errors[0]), errors[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo") or sys.platform == "win32", reason="needs a FIFO")
def test_cli_fifo_is_one_error_line(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code = cli(step02_mle.Config, step02_mle.main, ["--data", str(fifo), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(r"error: --data '.*pipe' is not a regular file", err), err
