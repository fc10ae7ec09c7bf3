"""Shared plumbing of the experiment modules: CLI from a config dataclass, staged outputs.

Every step module is a frozen ``@dataclass`` config, a ``main(config) -> dict`` and a call to
:func:`cli`. Outputs are staged in a hidden folder beside ``--out`` and moved in place only when the
step succeeds, so a failing step (bad ``--data`` file, NaN loss, ...) never leaves half-written
results behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["StepOutput", "cli", "plt", "to_jsonable"]

COMMON_HELP = {
    "out": "output folder (metrics.json, config.json, figures)",
    "seed": "random seed (every random draw derives from it)",
    "quick": "small, fast settings for a smoke run",
    "plots": "write figures",
}


def to_jsonable(value: Any) -> Any:
    """Numbers, arrays (numpy or JAX) and nested lists/tuples to plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, str | bool) or value is None:
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if hasattr(value, "__array__") or isinstance(value, list | tuple):
        arr = np.asarray(value)
        if arr.dtype.kind in "iub":
            return arr.astype(np.int64 if arr.dtype.kind != "b" else bool).tolist()
        if arr.dtype.kind == "f":
            return arr.astype(np.float64).tolist()
        return [to_jsonable(v) for v in value]
    return value


def _check_finite(metrics: Mapping[str, Any]) -> None:
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {key!r} is {value}: the run diverged; try a smaller learning rate")


class StepOutput:
    """Stage a step's files and move them to ``config.out`` only if the step succeeds.

    Use as ``with StepOutput(config) as out: out.figure(fig, "name"); out.finish(metrics)``.
    """

    def __init__(self, config: Any):
        self.final = Path(config.out)
        self.plots = bool(getattr(config, "plots", True))
        self.config = config
        self.metrics: dict[str, Any] | None = None
        self.tmp: Path | None = None

    def __enter__(self) -> StepOutput:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        return self

    def path(self, name: str) -> Path:
        """Staging path for an extra file or folder (checkpoints, arrays)."""
        assert self.tmp is not None, "use StepOutput as a context manager"
        return self.tmp / name

    def figure(self, fig: Any, name: str) -> None:
        """Save a matplotlib figure as ``name.png`` (skipped under ``--no-plots``) and close it."""
        if self.plots:
            fig.savefig(self.path(f"{name}.png"), dpi=100, bbox_inches="tight")
        plt.close(fig)

    def finish(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Record the metrics (written on successful exit) and return them as plain JSON values."""
        self.metrics = to_jsonable(dict(metrics))
        _check_finite(self.metrics)
        return self.metrics

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        try:
            if exc_type is not None:
                return
            if self.metrics is None:
                raise RuntimeError("StepOutput closed without finish(metrics)")
            config = to_jsonable(dataclasses.asdict(self.config))
            (self.tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=1) + "\n")
            (self.tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
            self.final.mkdir(parents=True, exist_ok=True)
            for item in sorted(self.tmp.iterdir()):
                target = self.final / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _field_type(field: dataclasses.Field, hints: Mapping[str, Any]) -> tuple[type | None, bool]:
    """(scalar type, optional) of a config field, or (None, _) when the CLI cannot set it."""
    tp = hints[field.name]
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) != len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else None
    return (tp if tp in (int, float, str, bool) else None), optional


def build_parser(config_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--kebab-case`` flag per scalar config field."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    hints = typing.get_type_hints(config_cls)
    helps = getattr(config_cls, "HELP", {})
    for field in dataclasses.fields(config_cls):
        tp, _ = _field_type(field, hints)
        if tp is None:
            continue
        flag = "--" + field.name.replace("_", "-")
        text = helps.get(field.name, COMMON_HELP.get(field.name, field.name.replace("_", " ")))
        if tp is bool:
            if field.default is True:
                parser.add_argument(
                    "--no-" + field.name.replace("_", "-"),
                    dest=field.name,
                    action="store_false",
                    help=f"do not: {text}",
                )
            else:
                parser.add_argument(flag, dest=field.name, action="store_true", help=text)
        else:
            parser.add_argument(
                flag,
                dest=field.name,
                type=tp,
                default=field.default,
                help=text,
                choices=getattr(config_cls, "CHOICES", {}).get(field.name),
            )
    return parser


def cli(
    config_cls: type,
    main: Callable[[Any], dict],
    argv: list[str] | None = None,
    description: str | None = None,
) -> int:
    """Parse ``argv`` into ``config_cls``, run ``main``, print a summary; return the exit code.

    Bad input (``ValueError``, ``FileNotFoundError``) becomes one ``error:`` line and exit code 2.
    """
    parser = build_parser(config_cls, description)
    args = parser.parse_args(argv)
    config = config_cls(**vars(args))
    start = time.perf_counter()
    try:
        metrics = main(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    line = summary(metrics, getattr(config_cls, "SUMMARY", ()))
    print(f"{line} ({time.perf_counter() - start:.1f} s) -> {config.out}")
    return 0


def summary(metrics: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """One short line with the chosen metrics (the first scalar ones when ``keys`` is empty)."""
    keys = keys or tuple(k for k, v in metrics.items() if isinstance(v, int | float))[:3]
    parts = []
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, float):
            parts.append(f"{key}={value:.5g}")
        elif isinstance(value, list) and value and isinstance(value[0], float):
            parts.append(
                f"{key}=[{', '.join(f'{v:.4g}' for v in value[:4])}{', ...' if len(value) > 4 else ''}]"
            )
        elif value is not None:
            parts.append(f"{key}={value}")
    return " ".join(parts)
