"""Compare two output folders of ``python -m experiments``: every step's ``metrics.json`` must be equal
apart from timings (``experiments._outputs.is_timing``: ``*_seconds``/``*_s``, and in the benchmarks
``ratio_*`` and ``*_loadavg_*``; the rule ``tests/test_determinism.py`` applies).

    uv run python .ci/compare_metrics.py BEFORE_DIR AFTER_DIR

Paths to a step's folder inside strings (e.g. ``judge_source: reused BEFORE_DIR/cnn``) are compared as
``<OUT>/cnn``. Prints one line per step (``same``, or the keys that differ with both
values) and exits 1 when any step differs or is missing on one side.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments._outputs import without_timings  # noqa: E402  (the project's own notion of a timing)


def _masked(text: str, steps: list[str]) -> str:
    """``text`` with every path to a step's folder (``/any/where/cnn``) written as ``<OUT>/cnn``."""
    for name in steps:
        text = re.sub(r"[^\s'\"]*/" + re.escape(name) + r"\b", "<OUT>/" + name, text)
    return text


def main(before: Path, after: Path) -> int:
    found = [{p.parent.name for p in folder.glob("*/metrics.json")} for folder in (before, after)]
    steps = sorted(found[0] | found[1])
    failed = 0
    for step in steps:
        files = [folder / step / "metrics.json" for folder in (before, after)]
        if not all(f.is_file() for f in files):
            missing = " and ".join(str(f.parent.parent) for f in files if not f.is_file())
            print(f"{step:18s} MISSING in {missing}")
            failed += 1
            continue
        old, new = (without_timings(step, json.loads(_masked(f.read_text(), steps))) for f in files)
        if old == new:
            print(f"{step:18s} same ({len(old)} non-timing keys)")
            continue
        failed += 1
        keys = sorted(set(old) | set(new))
        diffs = [k for k in keys if old.get(k, "<absent>") != new.get(k, "<absent>")]
        print(f"{step:18s} DIFFERENT in {len(diffs)} of {len(keys)} keys")
        for k in diffs:
            print(f"    {k}: {str(old.get(k, '<absent>'))[:100]}  ->  {str(new.get(k, '<absent>'))[:100]}")
    print(f"{len(steps) - failed} of {len(steps)} steps identical apart from timings")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python .ci/compare_metrics.py BEFORE_DIR AFTER_DIR")
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
