"""Run every step in quick mode and write one HTML report: ``python -m experiments``.

Each step writes ``OUT/<step>/`` (metrics.json, config.json, figures); this runner prints one summary
line per step, writes ``OUT/report.html`` (self-contained: figures are embedded, no network needed) and
exits 1 if any step failed. Bad flags (an ``--out`` that is a file or not writable, a ``--seed`` outside
``[0, 2**32 - 1]``, an unknown step in ``--only``) are one ``error:`` line and exit code 2, before any
step runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import sys
import time
import traceback
from pathlib import Path

from experiments import _outputs
from experiments._cli import EXIT_INTERRUPTED, ArgumentParser, parse_seed, summary
from experiments.report import StepResult, write_report

ALL_STEPS = (
    "step01_normal",
    "step02_mle",
    "step03_mvn",
    "step04_gmm",
    "step05_em",
    "step06_autodiff",
    "cnn",
    "step07_vae",
    "step08_hvae",
    "step09_diffusion",
    "step10_guidance",
    "benchmarks",
)


def available_steps() -> list[str]:
    """The steps of ALL_STEPS that exist in this checkout, in book order."""
    return [name for name in ALL_STEPS if importlib.util.find_spec(f"experiments.{name}") is not None]


def run_step(name: str, out: Path, *, seed: int, quick: bool, plots: bool) -> StepResult:
    """Import ``experiments.<name>`` and run its ``main`` on its default config, quick by default."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"experiments.{name}")
        config = dataclasses.replace(
            module.Config(), out=str(out / name), seed=seed, quick=quick, plots=plots
        )
        with _outputs.run_lock(config.out):  # another run writing into OUT/<step> is refused
            metrics = module.main(config)
        line = summary(metrics, getattr(module.Config, "SUMMARY", ()))
        return StepResult(name, True, time.perf_counter() - start, line, out / name)
    except Exception as err:  # one failing step must not stop the others
        if isinstance(err, ValueError | FileNotFoundError):  # bad input: the message names the fix
            detail = f"error: {err}"
        else:
            detail = "".join(traceback.format_exception(err))
        return StepResult(
            name, False, time.perf_counter() - start, f"{type(err).__name__}: {err}", out / name, detail
        )


def _run_steps(steps: list[str], out: Path, *, seed: int, quick: bool, plots: bool) -> list[StepResult]:
    """Run the steps one after the other, printing one line each (and a failure's detail)."""
    results = []
    width = max(len(s) for s in steps)
    for name in steps:
        result = run_step(name, out, seed=seed, quick=quick, plots=plots)
        results.append(result)
        status = "ok  " if result.ok else "FAIL"
        print(f"{name:<{width}}  {status} {result.seconds:7.1f} s  {result.summary}", flush=True)
        if not result.ok:
            print(result.detail, file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    steps = available_steps()
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    parser.add_argument(
        "--seed", type=parse_seed, default=0, help="random seed passed to every step (default: 0)"
    )
    parser.add_argument(
        "--full", action="store_true", help="run the full (slow) settings instead of quick mode"
    )
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip figures")
    parser.add_argument(
        "--only", default=None, help=f"comma-separated subset of steps to run; available: {','.join(steps)}"
    )
    try:
        args = parser.parse_args(argv)
        if args.only is not None:
            wanted = [s.strip() for s in args.only.split(",") if s.strip()]
            unknown = [s for s in wanted if s not in steps]
            if unknown or not wanted:
                parser.error(
                    f"--only {args.only!r}: unknown step(s) {unknown}; pass a comma-separated subset "
                    f"of {steps}"
                )
            steps = [s for s in steps if s in wanted]
        if not steps:
            parser.error("no experiment steps found in this checkout; reinstall dlx-jax")
    except SystemExit as stop:  # --help (0) or a bad flag (2; the parser printed the error line)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    try:
        _outputs.check_out_dir(args.out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = _run_steps(steps, out, seed=args.seed, quick=not args.full, plots=args.plots)
    except KeyboardInterrupt:
        print("interrupted; the steps that finished kept their outputs (no report written)", file=sys.stderr)
        return EXIT_INTERRUPTED
    report = write_report(results, out / "report.html", quick=not args.full, seed=args.seed)
    failed = [r.name for r in results if not r.ok]
    print(f"report: {report}" + (f"  ({len(failed)} failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
