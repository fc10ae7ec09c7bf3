"""Benchmarks — jit-compiled dlx_jax code against its peers, measured side by side in one run.

``python -m experiments.benchmarks`` runs every section in :data:`SECTIONS` (``--only`` picks some)
and writes ``OUT/metrics.json``: ``*_median_s`` (steady-state median seconds), ``*_compile_s``
(first call: tracing + compilation + one run), ``ratio_*`` (peer median / JAX median, or the
ratio the key names), plus device and version strings, and ``ratios.png``, a bar chart of the
ratios. ``--quick`` uses tiny sizes and few repeats (a smoke run for tests and the run-all).

A section is a submodule ``experiments.benchmarks.<name>`` exposing ``NAME`` and
``run(config) -> dict`` of flat metrics. A section whose peer library is missing reports that in a
string metric (``<name>_<peer>_skipped``) and skips only that row. Absolute times on a shared
machine are noisy; ratios measured in the same run are what to compare.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import time
from dataclasses import dataclass

from experiments._outputs import StepOutput
from experiments._plots import plt

__all__ = ["SECTIONS", "Config", "environment", "main"]

# Submodules of experiments.benchmarks, run in this order; later issues append theirs.
SECTIONS: tuple[str, ...] = ("probability", "cnn", "vae", "diffusion")


@dataclass(frozen=True)
class Config:
    out: str = "outputs/benchmarks"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    only: str | None = None
    repeats: int = 5

    SUMMARY = (
        "ratio_mvn_logpdf_scipy_over_jax",
        "ratio_em_sklearn_over_jax",
        "ratio_restarts_sklearn_over_jax",
        "ratio_cnn_jax_over_torch",
        "ratio_vae_epoch_torch_over_jax",
        "ratio_diffusion_train_jax_over_torch",
        "ratio_diffusion_sample_step_jax_over_torch",
    )
    HELP = {
        "only": f"comma-separated subset of sections to run; available: {','.join(SECTIONS)}",
        "repeats": "steady-state calls timed per row (the median is reported); --quick uses fewer",
    }
    LIMITS = {"repeats": (1000, "each repeat is one more timed call of every row")}


def environment() -> dict[str, str | int]:
    """Device and version strings recorded beside the timings."""
    import jax
    import numpy as np

    devices = jax.devices()
    return {
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
        "device": f"{devices[0].platform}:{devices[0].device_kind} x{len(devices)}",
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 0,
    }


def _bar_color(name: str, value: float) -> str:
    """Green where the ratio says JAX is faster than the other side, red where slower, grey if neither."""
    if "_over_jax" in name or name.endswith("_over_scan"):  # other time / JAX time
        return "tab:green" if value > 1 else "tab:red"
    if "_jax_" in name and "_over_" in name:  # JAX time / other time
        return "tab:green" if value < 1 else "tab:red"
    return "tab:gray"


def _selected(config: Config) -> list[str]:
    if config.only is None:
        return list(SECTIONS)
    wanted = [s.strip() for s in config.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown or not wanted:
        raise ValueError(
            f"--only {config.only!r}: unknown section(s) {unknown}; choose from {list(SECTIONS)}"
        )
    return wanted


def main(config: Config) -> dict:
    if config.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {config.repeats}; pass a positive count")
    sections = _selected(config)
    metrics: dict = dict(environment())
    metrics["sections"] = ",".join(sections)
    for name in sections:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            metrics[f"{name}_skipped"] = f"section module experiments.benchmarks.{name} is missing"
            continue
        module = importlib.import_module(f"{__name__}.{name}")
        start = time.perf_counter()
        metrics.update(module.run(config))
        metrics[f"{name}_section_s"] = time.perf_counter() - start

    ratios = {k: v for k, v in metrics.items() if k.startswith("ratio_") and isinstance(v, int | float)}
    with StepOutput(config) as out:
        if out.plots and ratios:
            title = f"dlx_jax benchmarks on {metrics['device']}"
            _ratios_figure(out, ratios, title=title, quick=config.quick)
        return out.finish(metrics)


def _ratios_figure(out: StepOutput, ratios: dict[str, float], *, title: str, quick: bool) -> None:
    """One bar per ratio on a log scale, green where JAX is faster, red where slower."""
    names = list(ratios)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
    ax.barh(range(len(names)), [ratios[n] for n in names], color=[_bar_color(n, ratios[n]) for n in names])
    ax.set_yticks(range(len(names)), [n.removeprefix("ratio_") for n in names], fontsize=8)
    ax.axvline(1.0, color="k", lw=1, ls="--", label="1× (equal)")
    ax.set_xscale("log")
    ax.invert_yaxis()
    for i, n in enumerate(names):
        ax.text(ratios[n], i, f" {ratios[n]:.3g}×", va="center", fontsize=8)
    ax.set_xlabel(
        "a_over_b = median time of a / median time of b, same run (log scale); "
        "green: JAX faster, red: JAX slower"
    )
    ax.set_title(title + (" (quick)" if quick else ""))
    ax.legend(loc="lower right", fontsize=8)
    out.figure(fig, "ratios")
