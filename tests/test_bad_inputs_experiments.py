"""What a hostile but realistic user still broke in the experiments: Ctrl-C during
training, size options larger than memory, a folder name longer than the file system takes, and
two runs writing into one ``--out`` folder. Each is one clear line (``error:`` with the problem and
the fix, exit code 2; or the Ctrl-C line, exit code 130), no traceback, and an ``--out`` folder
that is unchanged or, after Ctrl-C, resumable.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlx_jax import training
from experiments import (
    _fitting,
    _outputs,
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
)
from experiments._cli import build_parser, cli

ROOT = Path(__file__).resolve().parents[1]
LONG_NAME = "a" * 300


def _run(module) -> Callable[[list[str]], int]:
    return functools.partial(cli, module.Config, module.main)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }


def _one_error(run: Callable[[list[str]], int], argv: list[str], tmp_path: Path, capsys) -> str:
    """Run in-process; assert exit code 2, one ``error:`` line, no traceback, tmp_path unchanged."""
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert _snapshot(tmp_path) == before
    return errors[0]


@dataclass(frozen=True)
class Case:
    run: Callable[[list[str]], int]
    args: tuple[str, ...]
    problem: str
    fix: str


TOO_LARGE = "is too large for this step"

SIZE_CASES: dict[str, Case] = {
    "step02-n-generated-2**31-1": Case(
        _run(step02_mle),
        ("--n-generated", "2147483647"),
        rf"--n-generated 2147483647 {TOO_LARGE} \(the float64 draws are held in memory",
        r"pass --n-generated 10,000,000 or less",
    ),
    "step02-bins": Case(_run(step02_mle), ("--bins", "2000000000"), TOO_LARGE, r"--bins 100,000 or less"),
    "step01-trials": Case(
        _run(step01_normal), ("--trials", "2147483647"), r"--trials .*uniform draws", r"--trials 1,000,000"
    ),
    "step03-grid-size": Case(
        _run(step03_mvn), ("--grid-size", "100000"), r"GRID_SIZE² points", r"--grid-size 2,000 or less"
    ),
    "step03-n-generated": Case(
        _run(step03_mvn), ("--n-generated", "2147483647"), r"scatter plot", r"--n-generated 1,000,000"
    ),
    "step04-n-samples": Case(
        _run(step04_gmm), ("--n-samples", "2147483647"), TOO_LARGE, r"--n-samples 1,000,000 or less"
    ),
    "step05-max-iter": Case(
        _run(step05_em), ("--max-iter", "2147483647"), r"traces keep", r"--max-iter 1,000,000 or less"
    ),
    "step05-restarts-times-max-iter": Case(
        _run(step05_em),
        ("--restarts", "10000", "--max-iter", "100000"),
        r"keeps 1,000,010,000 log-likelihood values .* more than 100,000,000",
        r"pass fewer --restarts or a smaller --max-iter",
    ),
    "step06-rosenbrock-iters": Case(
        _run(step06_autodiff), ("--rosenbrock-iters", "2147483647"), TOO_LARGE, r"10,000,000 or less"
    ),
    "step06-points-times-hidden": Case(
        _run(step06_autodiff),
        ("--num-points", "1000000", "--mlp-hidden", "1000"),
        r"1,000,000,000 hidden activations",
        r"pass fewer --num-points or a smaller --mlp-hidden",
    ),
    "step07-iwae-k": Case(
        _run(step07_vae), ("--quick", "--iwae-k", "2147483647"), r"IWAE_K decoded samples", r"--iwae-k 10,000"
    ),
    "step08-hidden-dim": Case(
        _run(step08_hvae), ("--quick", "--hidden-dim", "1000000"), TOO_LARGE, r"--hidden-dim 10,000 or less"
    ),
    "benchmarks-repeats": Case(
        _run(benchmarks), ("--quick", "--repeats", "2147483647"), TOO_LARGE, r"--repeats 1,000 or less"
    ),
}


@pytest.mark.parametrize("name", sorted(SIZE_CASES))
def test_size_options_are_bounded_by_what_the_run_can_hold(name, tmp_path, capsys):
    case = SIZE_CASES[name]
    line = _one_error(case.run, [*case.args, "--out", str(tmp_path / "out")], tmp_path, capsys)
    assert re.search(case.problem, line), line
    assert re.search(case.fix, line), line


@pytest.mark.parametrize(
    "out",
    [lambda tmp: tmp / LONG_NAME, lambda tmp: tmp / LONG_NAME / "sub", lambda tmp: tmp / "ok" / LONG_NAME],
    ids=["last", "middle", "under-a-new-folder"],
)
@pytest.mark.parametrize("module", [step02_mle, cnn])
def test_a_folder_name_longer_than_the_file_system_takes_is_one_error(module, out, tmp_path, capsys):
    line = _one_error(_run(module), ["--quick", "--out", str(out(tmp_path))], tmp_path, capsys)
    assert re.search(r"the folder name a+\.\.\. is 300 bytes long, more than this file system allows", line)
    assert line.endswith("pick a shorter name"), line


def test_the_runner_refuses_a_long_out_name_too(tmp_path, capsys):
    from experiments import __main__ as runner

    line = _one_error(
        runner.main, ["--only", "step01_normal", "--out", str(tmp_path / LONG_NAME)], tmp_path, capsys
    )
    assert "is 300 bytes long" in line and "pick a shorter name" in line


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    with _outputs.run_lock(out):  # another run holds the folder (a lock per open folder, as across processes)
        line = _one_error(_run(step02_mle), ["--quick", "--out", str(out)], tmp_path, capsys)
        assert line == f"error: another run is writing to {out}; wait for it to finish or pick another --out"
    assert not out.exists()  # the first run wrote nothing: its lock left nothing behind
    assert _run(step02_mle)(["--quick", "--no-plots", "--out", str(out)]) == 0  # free again
    assert sorted(p.name for p in out.iterdir()) == [_outputs.MANIFEST, "config.json", "metrics.json"]


def test_no_plots_help_says_what_it_does():
    text = build_parser(step02_mle.Config).format_help()
    assert "do not write figures (PNG); metrics only" in text
    assert "do not:" not in text


def test_the_noise_filter_of_a_restore_is_narrow(tmp_path, monkeypatch):
    """Around a restore only orbax's "Event loop is closed" reports are dropped; the block gives the
    previous hook back when it ends (after a failed restore the same narrow filter stays: its noise
    comes from tensorstore's threads, later)."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)

    def report(exc: BaseException) -> None:
        sys.unraisablehook(SimpleNamespace(exc_value=exc))

    with _fitting.checkpoint_errors():
        report(RuntimeError("Event loop is closed"))
        report(RuntimeError("something else"))
    assert [str(u.exc_value) for u in seen] == ["something else"]
    assert sys.unraisablehook == seen.append
    with pytest.raises(training.CheckpointError), _fitting.checkpoint_errors():
        raise training.CheckpointError("corrupted")
    report(RuntimeError("Event loop is closed"))
    report(ValueError("passed on"))
    assert [str(u.exc_value) for u in seen] == ["something else", "passed on"]


# --- Ctrl-C: one line, exit 130, a folder --resume continues ------------------------------------------


def _cnn(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.cnn",
        "--quick",
        "--epochs",
        "3",
        "--batch-size",  # 500 Adam steps an epoch: seconds, so the run is still going when interrupted
        "4",
        "--no-plots",
        "--out",
        str(out),
        *extra,
    ]


def test_ctrl_c_during_training_is_one_line_and_resumable(tmp_path, capsys):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _cnn(out), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    partial = out / "checkpoints.partial"
    deadline = time.monotonic() + 300
    try:
        while not (partial / "1").is_dir():  # epoch 1's checkpoint is complete (orbax renames it in place)
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run never saved its first epoch"
            time.sleep(0.02)
        # meanwhile a second run into the same folder is refused at once, touching nothing
        line = _one_error(_run(cnn), ["--quick", "--out", str(out)], tmp_path / "unrelated", capsys)
        assert line == f"error: another run is writing to {out}; wait for it to finish or pick another --out"
        assert proc.poll() is None, "the run finished before it could be interrupted; make its epochs longer"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted; continue with --resume", err
    assert not (out / "metrics.json").exists() and training.latest_checkpoint(partial) >= 1
    done = subprocess.run(
        _cnn(out, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "metrics.json").is_file() and training.latest_checkpoint(out / "checkpoints") == 3


def test_ctrl_c_in_a_step_without_checkpoints_says_nothing_was_written(tmp_path, capsys, monkeypatch):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(step02_mle, "main", interrupted)
    capsys.readouterr()
    assert cli(step02_mle.Config, step02_mle.main, ["--out", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err == "interrupted; no outputs were written (run the step again)\n"
    assert list(tmp_path.iterdir()) == []
