"""Bad input from a hostile user, across the CLI of every step, the runner, the benchmarks and the
data loaders: each is one clear error that names the problem and the fix, found before the
expensive parts, and leaves no partial output behind.

Every CLI case is run in-process through the step's ``cli`` (or the runner's ``main``) and checks:
exit code 2, exactly one ``error:`` line and no traceback on stderr, a regex for the problem and one
for the fix, and a byte-for-byte unchanged ``tmp_path`` (the ``--out`` folder absent or unchanged).
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlx_jax import data, training, vae
from experiments import __main__ as runner
from experiments import (
    _generative,
    benchmarks,
    cnn,
    step01_normal,
    step02_mle,
    step03_mvn,
    step04_gmm,
    step05_em,
    step06_autodiff,
    step07_vae,
    step08_hvae,
    step09_diffusion,
    step10_guidance,
)
from experiments._cli import check_config, cli
from experiments._outputs import MANIFEST, StepOutput
from experiments._outputs import check_finite as _check_finite

BIG_SEED = str(2**70)  # the hostile user's "2**70", as digits


def _run(module) -> Callable[[list[str]], int]:
    return functools.partial(cli, module.Config, module.main)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: file bytes, or None for a folder."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }


def _file(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _idx(array: np.ndarray) -> bytes:
    array = np.asarray(array, np.uint8)
    return (
        struct.pack(">I", 0x0800 | array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )


def _idx_dir(tmp: Path, *, corrupt: str | None = None) -> str:
    """A folder of the four IDX files (2 train, 2 test digits), one of them corrupted as asked."""
    folder = tmp / "idx"
    folder.mkdir()
    images = np.zeros((2, 28, 28), np.uint8)
    labels = np.array([3, 7], np.uint8)
    for role, stem in data.IDX_FILES.items():
        raw = _idx(images if role.startswith("x") else labels)
        if role == "x_test" and corrupt == "truncated":
            raw = raw[:-5]
        if role == "y_train" and corrupt == "magic":
            raw = b"\x00\x00\x08\x05" + raw[4:]
        (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
    return str(folder)


@dataclass(frozen=True)
class Case:
    """One bad input: what to run, the extra argv (built in tmp_path), regexes for problem and fix."""

    run: Callable[[list[str]], int]
    args: Callable[[Path], list[str]]
    problem: str
    fix: str
    out: bool = True  # add --out tmp_path/out (False: the case passes its own --out)


def _args(*argv: str) -> Callable[[Path], list[str]]:
    return lambda tmp: list(argv)


def _data(content: str | bytes, name: str = "bad.txt", *extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["--data", _file(tmp, name, content), *extra]


def _checkpoints_file(tmp: Path) -> str:
    """An --out folder whose ``checkpoints`` is a file."""
    (tmp / "o").mkdir()
    _file(tmp / "o", "checkpoints", "x")
    return str(tmp / "o")


HUGE_1 = "1e308\n-1e308\n5\n"
HUGE_2 = "1e308 1\n-1e308 2\n5 3\n4 4\n"
SEED_RANGE = r"--seed.*must be an integer in \[0, 4294967295\]"
FINITE = r"must be a finite number"
ORDINARY = r"pass an ordinary number"
IDX_NAMES = r"four IDX files"

CASES: dict[str, Case] = {
    # --- --seed: one rule for every step, named, at parse time --------------------------------
    "step01-seed-negative": Case(
        _run(step01_normal), _args("--seed", "-1"), SEED_RANGE, r"pass e\.g\. --seed 0"
    ),
    "step02-seed-2**70": Case(
        _run(step02_mle), _args("--seed", BIG_SEED), SEED_RANGE, r"pass e\.g\. --seed 0"
    ),
    "step05-seed-not-int": Case(
        _run(step05_em), _args("--seed", "abc"), r"--seed.*expected an integer", r"integers without"
    ),
    "cnn-seed-negative": Case(
        _run(cnn), _args("--seed", "-1", "--quick"), SEED_RANGE, r"pass e\.g\. --seed 0"
    ),
    "step07-seed-2**32": Case(
        _run(step07_vae), _args("--seed", str(2**32), "--quick"), SEED_RANGE, r"--seed 0"
    ),
    # --- number options: finite, integers in range ----------------------------------------------
    "step05-tol-nan": Case(_run(step05_em), _args("--tol", "nan"), rf"--tol: {FINITE}, got nan", ORDINARY),
    "step02-a-inf": Case(_run(step02_mle), _args("--a", "inf"), rf"--a: {FINITE}", r"default 160\.0"),
    "step06-lr-overflow": Case(
        _run(step06_autodiff), _args("--mlp-lr", "1e400"), rf"--mlp-lr: {FINITE}", ORDINARY
    ),
    "step10-gamma-nan": Case(
        _run(step10_guidance), _args("--gamma", "nan", "--quick"), rf"--gamma: {FINITE}", ORDINARY
    ),
    "step01-trials-float": Case(
        _run(step01_normal),
        _args("--trials", "1e4"),
        r"--trials: expected an integer, got '1e4'",
        r"without a decimal point or exponent",
    ),
    "step03-grid-out-of-range": Case(
        _run(step03_mvn),
        _args("--grid-size", "99999999999"),
        r"--grid-size: is out of range",
        r"at most 2147483647",
    ),
    "cnn-unknown-dataset": Case(
        _run(cnn), _args("--dataset", "cifar"), r"--dataset: invalid choice: 'cifar'", r"choose from"
    ),
    "step01-unknown-flag": Case(
        _run(step01_normal), _args("--bogus", "1"), r"unrecognized arguments: --bogus", r"see --help"
    ),
    # --- --out: a file, under a file, not writable ----------------------------------------------
    "step01-out-is-file": Case(
        _run(step01_normal),
        lambda tmp: ["--out", _file(tmp, "taken", "x")],
        r"--out .*taken is an existing file, not a folder",
        r"pass a folder path",
        out=False,
    ),
    "step04-out-under-file": Case(
        _run(step04_gmm),
        lambda tmp: ["--out", _file(tmp, "taken", "x") + "/sub/dir"],
        r"cannot be created: .*taken is a file",
        r"pass a path whose parents are folders",
        out=False,
    ),
    "step02-out-not-writable": Case(
        _run(step02_mle),
        _args("--out", "/proc/dlx-no-such/out"),
        r"--out /proc/dlx-no-such/out is not writable",
        r"pass a folder you can write to",
        out=False,
    ),
    "step06-out-empty": Case(
        _run(step06_autodiff), _args("--out", ""), r"--out is empty", r"pass a folder path", out=False
    ),
    "step08-out-is-file": Case(
        _run(step08_hvae),
        lambda tmp: ["--quick", "--out", _file(tmp, "taken", "x")],
        r"is an existing file",
        r"pass a folder path",
        out=False,
    ),
    # --- --data files: every line counts, names the line and the fix ----------------------------
    "step02-data-is-directory": Case(
        _run(step02_mle), lambda tmp: ["--data", str(tmp)], r"is a directory", r"pass a file of numbers"
    ),
    "step03-data-missing": Case(
        _run(step03_mvn),
        lambda tmp: ["--data", str(tmp / "nope.txt")],
        r"does not exist",
        r"pass a path to a text file",
    ),
    "step02-data-typo-first-line": Case(
        _run(step02_mle),
        _data("17O\n200\n300\n"),
        r"bad\.txt:1: '17O' starts like a number",
        r"fix the value, or comment the line out",
    ),
    "step03-data-mixed-first-line": Case(
        _run(step03_mvn),
        _data("x 12\n1 2\n3 4\n5 7\n"),
        r":1: 'x' is not a number, and the line also holds numbers",
        r"fix the value",
    ),
    "step02-data-second-header": Case(
        _run(step02_mle),
        _data("height\nweight\n1\n2\n"),
        r":2: non-numeric value 'weight'",
        r"at most one header line",
    ),
    "step03-data-ragged": Case(
        _run(step03_mvn),
        _data("1 2\n3 4\n5\n"),
        r":3: ragged row with 1 columns",
        r"every row needs the same number",
    ),
    "step02-data-nan": Case(
        _run(step02_mle), _data("1\nnan\n3\n"), r":2: NaN or infinite value 'nan'", r"remove or impute it"
    ),
    "step02-data-1e400": Case(
        _run(step02_mle),
        _data("1\n1e400\n3\n"),
        r":2: '1e400' is beyond float64's range",
        r"rescale the data",
    ),
    "step02-data-utf16": Case(
        _run(step02_mle), _data("1\n2\n3\n".encode("utf-16")), r"is UTF-16 text", r"save it as UTF-8"
    ),
    "step05-data-binary": Case(
        _run(step05_em),
        _data(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
        r"is a binary file",
        r"pass a text file of numbers",
    ),
    "step04-data-gzip": Case(
        _run(step04_gmm),
        _data(gzip.compress(b"1 2\n3 4\n"), "d.txt.gz"),
        r"is gzip-compressed",
        r"decompress it",
    ),
    "step02-data-empty": Case(
        _run(step02_mle),
        _data("# nothing here\n\n"),
        r"holds no numbers",
        r"pass a file with one sample per line",
    ),
    "step03-data-one-column": Case(
        _run(step03_mvn), _data("1\n2\n3\n"), r"has 1 columns but this step needs 2", r"pass a 2-column file"
    ),
    # --- --data values the arithmetic cannot take: magnitude and spread, before any fit ---------
    "step02-data-huge": Case(
        _run(step02_mle), _data(HUGE_1), r"values up to 1e\+308 .* too large", r"rescale the data"
    ),
    "step03-data-huge": Case(
        _run(step03_mvn), _data(HUGE_2), r"values up to 1e\+308 .* too large", r"rescale the data"
    ),
    "step04-data-huge": Case(
        _run(step04_gmm), _data(HUGE_2), r"values up to 1e\+308 .* too large", r"rescale the data"
    ),
    "step05-data-huge": Case(
        _run(step05_em), _data(HUGE_2), r"values up to 1e\+308 .* too large", r"rescale the data"
    ),
    "step02-data-constant": Case(
        _run(step02_mle),
        _data("5\n5\n5\n"),
        r"the data has zero variance \(all 3 values are 5\)",
        r"at least two different values",
    ),
    "step03-data-constant-column": Case(
        _run(step03_mvn),
        _data("5 1\n5 2\n5 3\n5 4\n"),
        r"column 1 has zero variance",
        r"at least two different values",
    ),
    "step05-data-constant-column": Case(
        _run(step05_em),
        _data("1 7\n2 7\n3 7\n"),
        r"column 2 has zero variance",
        r"at least two different values",
    ),
    "step03-data-collinear": Case(
        _run(step03_mvn),
        _data("1 2\n2 4\n3 6\n4 8\n"),
        r"collinear .*not positive definite",
        r"pass data whose columns are not linear functions",
    ),
    "step02-data-too-few": Case(_run(step02_mle), _data("170\n"), r"holds 1 value", r"at least 2"),
    # --- image data: --dataset / --data-dir --------------------------------------------------------
    "cnn-data-dir-is-file": Case(
        _run(cnn),
        lambda tmp: ["--dataset", "mnist", "--data-dir", _file(tmp, "f", "x")],
        r"--data-dir .* is a file, not a folder",
        r"pass the folder that holds the " + IDX_NAMES,
    ),
    "cnn-data-dir-missing": Case(
        _run(cnn),
        lambda tmp: ["--dataset", "fashion-mnist", "--data-dir", str(tmp / "none")],
        r"--data-dir .* does not exist",
        r"pass a folder with the " + IDX_NAMES,
    ),
    "cnn-data-dir-lacks-files": Case(
        _run(cnn),
        lambda tmp: ["--dataset", "mnist", "--data-dir", str(tmp)],
        r"lacks train-images-idx3-ubyte",
        r"needs the four standard IDX files",
    ),
    "step07-idx-truncated": Case(
        _run(step07_vae),
        lambda tmp: ["--quick", "--dataset", "mnist", "--data-dir", _idx_dir(tmp, corrupt="truncated")],
        r"t10k-images-idx3-ubyte\.gz: .* it is truncated",
        r"re-download it",
    ),
    "step08-idx-bad-magic": Case(
        _run(step08_hvae),
        lambda tmp: ["--quick", "--dataset", "mnist", "--data-dir", _idx_dir(tmp, corrupt="magic")],
        r"train-labels-idx1-ubyte\.gz: bad IDX magic number 2053",
        r"expected 2051 for an image file or 2049",
    ),
    "step09-mnist5k-with-data-dir": Case(
        _run(step09_diffusion),
        lambda tmp: ["--quick", "--data-dir", str(tmp)],
        r"mnist-5k is embedded and takes no --data-dir",
        r"drop it or use --dataset mnist",
    ),
    "step10-batch-larger-than-data": Case(
        _run(step10_guidance),
        _args("--quick", "--batch-size", "5000"),
        r"--batch-size 5000 is larger than the training set",
        r"pass --batch-size <= 1000",
    ),
    # --- step settings ----------------------------------------------------------------------------
    "step07-latent-dim-zero": Case(
        _run(step07_vae),
        _args("--quick", "--latent-dim", "0"),
        r"--latent-dim must be >= 1, got 0",
        r"pass a positive integer",
    ),
    "step09-ema-decay-one": Case(
        _run(step09_diffusion),
        _args("--quick", "--ema-decay", "1.0"),
        r"--ema-decay must be in \[0, 1\), got 1\.0",
        r"e\.g\. 0\.995",
    ),
    "step10-gammas-text": Case(
        _run(step10_guidance),
        _args("--quick", "--gammas", "a,b"),
        r"--gammas must be comma-separated numbers",
        r"like 0,1,3,5",
    ),
    "step10-guidance-interval-reversed": Case(
        _run(step10_guidance),
        _args("--quick", "--guidance-interval", "400,1"),
        r"--guidance-interval must satisfy 1 <= LO <= HI and LO <= T = 1000",
        r"or all \(every t of 1..1000\)",
    ),
    "step05-restarts-negative": Case(
        _run(step05_em),
        _args("--restarts", "-2"),
        r"--restarts must be >= 0",
        r"0 = the book's initialisation",
    ),
    "cnn-resume-numpy": Case(
        _run(cnn),
        _args("--resume", "--backend", "numpy"),
        r"numpy reference keeps no checkpoints",
        r"--resume needs --backend jax",
    ),
    "step09-checkpoints-is-file": Case(
        _run(step09_diffusion),
        lambda tmp: ["--quick", "--resume", "--out", _checkpoints_file(tmp)],
        r"checkpoints is a file",
        r"move the file away or pass another --out",
        out=False,
    ),
    # --- the runner and the benchmarks --------------------------------------------------------------
    "runner-out-is-file": Case(
        runner.main,
        lambda tmp: ["--out", _file(tmp, "taken", "x")],
        r"--out .*taken is an existing file",
        r"pass a folder path",
        out=False,
    ),
    "runner-seed-negative": Case(runner.main, _args("--seed", "-5"), SEED_RANGE, r"--seed 0"),
    "runner-unknown-step": Case(
        runner.main,
        _args("--only", "step99_nope"),
        r"unknown step\(s\) \['step99_nope'\]",
        r"pass a comma-separated subset",
    ),
    "runner-only-empty": Case(
        runner.main, _args("--only", ","), r"--only ','", r"pass a comma-separated subset"
    ),
    "benchmarks-repeats-zero": Case(
        _run(benchmarks),
        _args("--quick", "--repeats", "0"),
        r"--repeats must be >= 1",
        r"pass a positive count",
    ),
    "benchmarks-unknown-section": Case(
        _run(benchmarks), _args("--quick", "--only", "gpu"), r"unknown section\(s\) \['gpu'\]", r"choose from"
    ),
    "benchmarks-seed-2**70": Case(_run(benchmarks), _args("--seed", BIG_SEED), SEED_RANGE, r"--seed 0"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_cli_input_is_one_clear_error_and_leaves_nothing(name, tmp_path, capsys):
    case = CASES[name]
    argv = case.args(tmp_path) + (["--out", str(tmp_path / "out")] if case.out else [])
    if any(a.startswith("/proc/") for a in argv) and not Path("/proc").is_dir():
        pytest.skip("needs Linux's /proc, a folder nothing can be created in")
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = case.run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(case.problem, errors[0]), errors[0]
    assert re.search(case.fix, errors[0]), errors[0]
    assert _snapshot(tmp_path) == before  # nothing written: --out absent or unchanged, no staging left


def test_the_matrix_covers_every_step_and_enough_inputs():
    def owner(run) -> str:
        return run.args[0].__module__ if isinstance(run, functools.partial) else run.__module__

    covered = {owner(c.run) for c in CASES.values()}
    steps = {f"experiments.{s}" for s in runner.ALL_STEPS} | {"experiments.__main__"}
    assert steps <= covered, steps - covered
    assert len(CASES) >= 30


# --- the data loaders called directly ----------------------------------------------------------------


def _table(tmp: Path, content: str | bytes, **kw):
    return data.load_table(_file(tmp, "t.txt", content), **kw)


LOADER_CASES = {
    "table-directory": (lambda tmp: data.load_table(tmp), ValueError, r"is a directory", r"pass a file"),
    "table-missing": (
        lambda tmp: data.load_table(tmp / "x"),
        FileNotFoundError,
        r"does not exist",
        r"pass a path",
    ),
    "table-typo-first-line": (
        lambda tmp: _table(tmp, "17O\n200\n300\n"),
        ValueError,
        r"t\.txt:1: '17O'",
        r"fix the value",
    ),
    "table-bom-typo": (
        lambda tmp: _table(tmp, "\ufeff17O\n200\n"),
        ValueError,
        r":1: '17O'",
        r"comment the line out",
    ),
    "table-mixed-header": (
        lambda tmp: _table(tmp, "year 2020\n1 2\n"),
        ValueError,
        r":1: 'year' is not a number",
        r"fix the value",
    ),
    "table-wrong-ncols": (
        lambda tmp: _table(tmp, "1 2 3\n", ncols=2),
        ValueError,
        r"has 3 columns",
        r"pass a 2-column file",
    ),
    "sample-huge": (
        lambda tmp: data.check_sample(np.array([1e200, 1.0]), source="x"),
        ValueError,
        r"too large",
        r"rescale the data",
    ),
    "sample-underflow": (
        lambda tmp: data.check_sample(np.array([1e-300, 2e-300]), source="x"),
        ValueError,
        r"variance underflows",
        r"rescale the data",
    ),
    "idx-directory": (
        lambda tmp: data.read_idx(tmp),
        ValueError,
        r"is a directory",
        r"pass the IDX file itself",
    ),
    "idx-missing": (
        lambda tmp: data.read_idx(tmp / "nope"),
        FileNotFoundError,
        r"does not exist",
        r"pass the path of an MNIST-format IDX file",
    ),
    "idx-dims-overflow-int64": (
        lambda tmp: data.read_idx(
            _file(tmp, "i", struct.pack(">IIII", 2051, 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"\0" * 8)
        ),
        ValueError,
        r"need 79228162458924105385300197375 data bytes .* it is truncated",
        r"re-download it",
    ),
    "idx-label-out-of-range": (
        lambda tmp: data.read_idx(_file(tmp, "l", _idx(np.array([1, 12])))),
        ValueError,
        r"label 12 at index 1 is outside 0\.\.9",
        r"not an MNIST-style label file",
    ),
    "idx-corrupt-gzip": (
        lambda tmp: data.read_idx(_file(tmp, "g.gz", b"\x1f\x8b" + b"junk" * 4)),
        ValueError,
        r"corrupted or truncated gzip",
        r"re-download the file",
    ),
    "idx-dir-is-file": (
        lambda tmp: data.load_idx_dir(_file(tmp, "f", "x")),
        ValueError,
        r"is a file, not a folder",
        r"pass the folder",
    ),
    "dataset-unknown": (
        lambda tmp: data.load_dataset("cifar10"),
        ValueError,
        r"unknown dataset 'cifar10'",
        r"choose one of mnist-5k",
    ),
}


@pytest.mark.parametrize("name", sorted(LOADER_CASES))
def test_bad_files_for_the_loaders(name, tmp_path):
    call, kind, problem, fix = LOADER_CASES[name]
    with pytest.raises(kind) as info:
        call(tmp_path)
    assert re.search(problem, str(info.value)) and re.search(fix, str(info.value)), str(info.value)


def test_a_header_is_recognised_only_deliberately(tmp_path):
    np.testing.assert_array_equal(_table(tmp_path, "\ufeff100\n200\n300\n"), [100.0, 200.0, 300.0])  # BOM
    np.testing.assert_array_equal(_table(tmp_path, '\ufeff"eruptions","waiting"\n1,2\n'), [[1.0, 2.0]])
    np.testing.assert_array_equal(_table(tmp_path, "height (cm)\n170\n180\n"), [170.0, 180.0])


# --- --resume: settings changed, corrupted or missing checkpoints ------------------------------------


def _fake_checkpoint(out: Path, fingerprint: dict, state=None) -> Path:
    state = state or training.init_state({"w": jnp.zeros(1)}, optax.adam(1e-3))
    meta = {
        "epoch": 1,
        "history": {"loss": [1.0], "epoch_seconds": [0.1], "eval": []},
        "fingerprint": fingerprint,
    }
    training.save_checkpoint(out / "checkpoints", 1, state, meta)
    return out / "checkpoints"


VAE_TINY = [
    "--quick",
    "--epochs",
    "2",
    "--hidden-dim",
    "8",
    "--latent-dim",
    "2",
    "--iwae-k",
    "2",
    "--compare-torch",
    "off",
]


def _vae_fingerprint(**change) -> dict:
    cfg = replace(step07_vae.Config(), quick=True, **{"hidden_dim": 8, "latent_dim": 2, **change})
    return _generative.fingerprint(
        cfg, model="vae", n_train=_generative.QUICK["n_train"], fields=("latent_dim", "hidden_dim")
    )


def _resume_fails(tmp_path, capsys, module, argv) -> str:
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert cli(module.Config, module.main, [*argv, "--resume", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Event loop" not in err and "strict" not in err, err
    assert _snapshot(tmp_path) == before
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    return line


def test_resume_after_changing_a_shape_setting_names_the_setting(tmp_path, capsys):
    _fake_checkpoint(tmp_path / "out", _vae_fingerprint(latent_dim=5))
    line = _resume_fails(tmp_path, capsys, step07_vae, VAE_TINY)
    assert re.search(r"made with other settings \(saved, now\): \{'latent_dim': \(5, 2\)\}", line), line
    assert "use the same settings or run without --resume" in line


CORRUPTED = "is corrupted or incomplete (or was written for another model); delete it or run without --resume"


def test_resume_from_a_corrupted_checkpoint_is_one_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    params = _generative.init_jit(vae, jax.random.key(0), hidden_dim=8, latent_dim=2)
    folder = _fake_checkpoint(
        tmp_path / "out", _vae_fingerprint(), training.init_state(params, optax.adam(3e-4))
    )
    for blob in (folder / "1" / "state").rglob("d/*"):  # truncate every array file
        blob.write_bytes(blob.read_bytes()[:10])
    line = _resume_fails(tmp_path, capsys, step07_vae, VAE_TINY)
    assert line == f"error: checkpoint {folder} {CORRUPTED}"


def test_resume_from_a_checkpoint_with_garbage_metadata_is_one_error(tmp_path, capsys):
    folder = _fake_checkpoint(tmp_path / "out", {"anything": 1})
    (folder / "1" / "meta" / "metadata").write_text("{not json")
    line = _resume_fails(tmp_path, capsys, step08_hvae, ["--quick", "--hidden-dim", "8", "--latent-dim", "2"])
    assert line == f"error: checkpoint {folder} {CORRUPTED}"


@pytest.mark.parametrize("module", [cnn, step07_vae, step08_hvae, step09_diffusion, step10_guidance])
def test_resume_without_a_checkpoint_says_so_in_one_line(module, tmp_path, capsys):
    argv = [
        "--quick",
        "--resume",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli(module.Config, module.main, argv) == 2  # then the missing data stops it
    notes = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note:")]
    assert notes == [
        f"note: --resume: no checkpoint in {tmp_path / 'o' / 'checkpoints'} yet; training from scratch"
    ]
    assert list(tmp_path.iterdir()) == []


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("module", "change", "expect"),
    [
        (step07_vae, {"latent_dim": 3, "hidden_dim": 7}, {"latent_dim": 3, "hidden_dim": 7}),
        (step08_hvae, {"latent_dim": 3, "hidden_dim": 7}, {"latent_dim": 3, "hidden_dim": 7}),
        (step09_diffusion, {"features": 4}, {"model": "unet-4-labels0"}),
        (step10_guidance, {"features": 4}, {"model": "unet-4-labels10"}),
    ],
)
def test_every_resumable_step_fingerprints_its_shape_settings(module, change, expect, tmp_path, monkeypatch):
    """The fingerprint ``--resume`` compares holds every option that sets an array shape (the CNN
    has none: its layers are fixed), so a changed one is refused before any array is read."""

    def fit(*args, **kwargs):
        raise _Stop(kwargs["fingerprint"])

    monkeypatch.setattr(training, "fit", fit)
    with pytest.raises(_Stop) as info:
        module.main(replace(module.Config(), out=str(tmp_path / "o"), quick=True, plots=False, **change))
    assert expect.items() <= info.value.args[0].items(), info.value.args[0]


# --- partial output, JSON and messages ---------------------------------------------------------------


def test_a_rerun_with_no_plots_leaves_only_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    args = ["--quick", "--out", str(out)]
    assert cli(step02_mle.Config, step02_mle.main, args) == 0
    assert {"mle_fit.png", "cdf_probabilities.png"} <= {p.name for p in out.iterdir()}
    assert cli(step02_mle.Config, step02_mle.main, [*args, "--no-plots"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "config.json", "metrics.json", "notes.txt"]
    assert json.loads((out / MANIFEST).read_text())["files"] == ["config.json", "metrics.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left beside it


def test_a_tampered_manifest_never_removes_anything_outside_the_folder(tmp_path):
    @dataclass(frozen=True)
    class Cfg:
        out: str
        seed: int = 0
        plots: bool = True

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious.txt").write_text("keep")
    (out / "checkpoints").mkdir()
    (out / MANIFEST).write_text(
        json.dumps({"files": ["../precious.txt", "/etc/passwd", "checkpoints", "..", 3]})
    )
    with StepOutput(Cfg(out=str(out))) as step:
        step.finish({"x": 1.0})
    assert (tmp_path / "precious.txt").read_text() == "keep" and (out / "checkpoints").is_dir()


def test_non_finite_metrics_name_a_fix_the_step_has(tmp_path):
    with pytest.raises(ValueError, match=r"'sigma' is inf: .*rescale very large") as info:
        _check_finite({"sigma": float("inf")}, step02_mle.Config())
    assert "learning rate" not in str(info.value)
    with pytest.raises(ValueError, match=r"'loss_history' is nan: .*smaller learning rate \(--lr\)"):
        _check_finite({"loss_history": [1.0, float("nan")]}, step07_vae.Config())
    with pytest.raises(ValueError, match=r"--rosenbrock-lr, --linreg-lr, --mlp-lr"):
        _check_finite({"path": [[0.0, float("-inf")]]}, step06_autodiff.Config())


def test_check_config_guards_direct_calls_to_main(tmp_path):
    for change, match in [
        ({"seed": -1}, SEED_RANGE),
        ({"seed": True}, r"--seed must be an integer"),
        ({"tol": float("nan")}, rf"--tol {FINITE}"),
        ({"out": str(tmp_path / "f" / "x")}, r"is a file"),
    ]:
        (tmp_path / "f").write_text("x")
        with pytest.raises(ValueError, match=match):
            step05_em.main(replace(step05_em.Config(), **change))
    with pytest.raises(ValueError, match=r"unknown backend 'tf'; pass --backend one of jax, numpy"):
        check_config(replace(cnn.Config(), out=str(tmp_path / "o"), backend="tf"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
