"""Every experiment, run twice in ``--quick`` mode with the same seed, writes the same ``metrics.json``.

Only timings may differ, and they are recognisable by name: keys ending in ``_seconds`` or ``_s``
(and, in the benchmarks, the ``ratio_*`` keys, which are ratios of such timings, and the
``*_loadavg_*`` keys, the machine's load recorded beside them). Every random
draw derives from ``--seed`` through explicit JAX keys or a seeded ``numpy.random.Generator``;
there is no global RNG to leak state from the first run into the second.
"""

from __future__ import annotations

import json

import pytest

from experiments import __main__ as runner

STEPS = runner.available_steps()


def _is_timing(step: str, key: str) -> bool:
    if key.endswith(("_seconds", "_s")):
        return True
    return step == "benchmarks" and (key.startswith("ratio_") or "_loadavg_" in key)


def _without_timings(step: str, value):
    if isinstance(value, dict):
        return {k: _without_timings(step, v) for k, v in value.items() if not _is_timing(step, k)}
    if isinstance(value, list):
        return [_without_timings(step, v) for v in value]
    return value


@pytest.mark.parametrize("step", STEPS)
def test_a_quick_run_repeated_with_the_same_seed_gives_the_same_metrics(step, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    runs = []
    for name in ("first", "second"):
        result = runner.run_step(step, tmp_path / name, seed=3, quick=True, plots=False)
        assert result.ok, result.detail
        runs.append(json.loads((tmp_path / name / step / "metrics.json").read_text()))
    first, second = (_without_timings(step, m) for m in runs)
    assert first == second
    timings = sorted(k for k in runs[0] if _is_timing(step, k))
    assert set(runs[0]) - set(first) == set(timings)  # what was left out is exactly the timings
    assert len(first) >= 3, f"{step} records too few non-timing metrics to compare: {sorted(first)}"
