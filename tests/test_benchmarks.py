"""The benchmarks package: timing helper and a quick run of the sections."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import jax
import jax.numpy as jnp
import pytest

from experiments import benchmarks
from experiments._outputs import without_timings
from experiments.benchmarks._timing import Timing, ratio, time_call


def test_time_call_separates_first_call_and_blocks():
    calls = []

    def slow_first(x):
        calls.append(x)
        time.sleep(0.05 if len(calls) == 1 else 0.001)
        return jnp.asarray(x) * 2

    t = time_call(slow_first, 3, repeats=4)
    assert len(calls) == 5 and t.compile_s >= 0.05 and t.median_s < 0.04
    assert int(t.result) == 6 and len(t.times) == 4
    assert t.metrics("row") == {"row_median_s": t.median_s, "row_compile_s": t.compile_s}
    assert ratio(Timing(0.0, 2.0, (2.0,)), Timing(0.0, 0.5, (0.5,))) == 4.0
    with pytest.raises(ValueError, match="repeats"):
        time_call(slow_first, 1, repeats=0)
    jitted = time_call(jax.jit(lambda x: x + 1), jnp.ones(3), repeats=2, min_total_s=0.0)
    assert jitted.compile_s > jitted.median_s


def test_benchmarks_quick_contract_and_a_repeat_gives_the_same_metrics(tmp_path):
    """One quick run checks the contract; a second with the same seed must give the same metrics
    apart from timings (the benchmarks' case of ``tests/test_determinism.py``; the repeat leaves out
    the diffusion section, whose own repeat runs under ``-m slow`` there)."""
    metrics = benchmarks.main(replace(benchmarks.Config(), out=str(tmp_path), quick=True))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics
    repeat = ",".join(s for s in benchmarks.SECTIONS if s != "diffusion")
    config = replace(benchmarks.Config(), out=str(tmp_path / "again"), quick=True, plots=False, only=repeat)
    again = without_timings("benchmarks", benchmarks.main(config))
    first = without_timings("benchmarks", metrics)
    assert len(again) >= 3 and set(again) <= set(first)
    assert again.pop("sections") == repeat and first.pop("sections") == ",".join(benchmarks.SECTIONS)
    assert {k: first[k] for k in again} == again
    for key in (
        "ratio_mvn_logpdf_scipy_over_jax",
        "ratio_em_sklearn_over_jax",
        "ratio_restarts_n_over_1",
        "ratio_restarts_sklearn_over_jax",
        "em_jax_median_s",
        "em_jax_compile_s",
        "jax_version",
        "device",
    ):
        assert key in metrics, key
    assert all(v > 0 for k, v in metrics.items() if k.startswith("ratio_"))
    assert metrics["em_max_abs_mean_diff"] < 1e-8  # JAX and sklearn fitted the same model
    assert (tmp_path / "ratios.png").is_file()
    with pytest.raises(ValueError, match="unknown section"):
        benchmarks.main(replace(benchmarks.Config(), out=str(tmp_path / "x"), only="nope"))
