"""The run-all runner (`python -m experiments`), its HTML report and the shared step plumbing."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import __main__ as runner
from experiments import step01_normal
from experiments._cli import build_parser, summary
from experiments._outputs import StepOutput, to_jsonable


def test_available_steps_are_in_book_order_and_exist():
    steps = runner.available_steps()
    assert steps[:5] == ["step01_normal", "step02_mle", "step03_mvn", "step04_gmm", "step05_em"]
    assert [s for s in runner.ALL_STEPS if s in steps] == steps


def test_run_all_subset_writes_every_step_and_one_self_contained_report(tmp_path, capsys):
    code = runner.main(["--out", str(tmp_path), "--only", "step02_mle,step05_em"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step02_mle") and " ok " in lines[0]
    assert lines[1].startswith("step05_em") and "n_iter=9" in lines[1]
    for step in ("step02_mle", "step05_em"):
        assert json.loads((tmp_path / step / "metrics.json").read_text())
        assert json.loads((tmp_path / step / "config.json").read_text())["quick"] is True
    page = (tmp_path / "report.html").read_text()
    assert page.count("<section") == 2 and "data:image/png;base64," in page
    assert "log_likelihood_trace" in page and "http" not in page  # nothing fetched by the browser


def test_a_failing_step_is_reported_and_sets_the_exit_code(tmp_path, monkeypatch, capsys):
    def broken(config):
        raise RuntimeError("deliberate failure")

    monkeypatch.setattr(step01_normal, "main", broken)
    code = runner.main(["--out", str(tmp_path), "--only", "step01_normal,step02_mle", "--no-plots"])
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "deliberate failure" in out and "1 failed: step01_normal" in out
    page = (tmp_path / "report.html").read_text()
    assert "FAILED" in page and "deliberate failure" in page
    assert (tmp_path / "step02_mle" / "metrics.json").is_file()  # the other step still ran


def test_unknown_step_is_a_cli_error(tmp_path, capsys):
    assert runner.main(["--out", str(tmp_path), "--only", "step99_nope"]) == 2
    assert "error: --only 'step99_nope': unknown step(s)" in capsys.readouterr().err


@dataclasses.dataclass(frozen=True)
class _Cfg:
    out: str
    seed: int = 0
    quick: bool = False
    plots: bool = True
    data: str | None = None
    rate: float = 0.5


def test_parser_maps_config_fields_to_flags():
    args = build_parser(_Cfg).parse_args(
        ["--out", "o", "--seed", "3", "--quick", "--no-plots", "--rate", "2"]
    )
    assert vars(args) == {"out": "o", "seed": 3, "quick": True, "plots": False, "data": None, "rate": 2.0}


def test_step_output_moves_files_only_on_success(tmp_path):
    out_dir = tmp_path / "step"
    with pytest.raises(ValueError, match="boom"):
        with StepOutput(_Cfg(out=str(out_dir))) as out:
            out.path("partial.txt").write_text("half")
            raise ValueError("boom")
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []  # no partial output, no staging dir
    with StepOutput(_Cfg(out=str(out_dir))) as out:
        out.path("a.txt").write_text("a")
        out.finish({"x": 1.5})
    assert sorted(p.name for p in out_dir.iterdir()) == [
        ".outputs.json",
        "a.txt",
        "config.json",
        "metrics.json",
    ]
    assert json.loads((out_dir / ".outputs.json").read_text())["files"] == [
        "a.txt",
        "config.json",
        "metrics.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["step"]


def test_a_rerun_removes_what_it_no_longer_writes_and_keeps_everything_else(tmp_path):
    out_dir = tmp_path / "step"
    out_dir.mkdir()
    (out_dir / "mine.txt").write_text("a user's file")
    (out_dir / "checkpoints").mkdir()
    with StepOutput(_Cfg(out=str(out_dir))) as out:
        out.path("fig.png").write_text("old figure")
        out.path("params").mkdir()
        out.finish({"x": 1.0})
    with StepOutput(_Cfg(out=str(out_dir), plots=False)) as out:  # e.g. --no-plots: no figure
        out.path("params").mkdir()
        (out.path("params") / "w").write_text("new")
        out.finish({"x": 2.0})
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == [".outputs.json", "checkpoints", "config.json", "metrics.json", "mine.txt", "params"]
    assert (out_dir / "params" / "w").read_text() == "new"
    assert json.loads((out_dir / "metrics.json").read_text()) == {"x": 2.0}


def test_non_finite_metric_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="diverged"):
        with StepOutput(_Cfg(out=str(tmp_path / "s"))) as out:
            out.finish({"loss": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_to_jsonable_and_summary():
    import jax.numpy as jnp
    import numpy as np

    value = to_jsonable({"a": np.float32(1.5), "b": jnp.arange(3), "c": (1.0, 2.0), "d": np.bool_(True)})
    assert value == {"a": 1.5, "b": [0, 1, 2], "c": [1.0, 2.0], "d": True}
    assert json.dumps(value)
    assert summary({"loss": 0.123456, "hist": [1.0, 2.0, 3.0, 4.0, 5.0], "n": 3}, ("loss", "hist", "n")) == (
        "loss=0.12346 hist=[1, 2, 3, 4, ...] n=3"
    )
