"""Shared plumbing of the experiment modules: CLI from a config dataclass, checks, staged outputs.

Every step module is a frozen ``@dataclass`` config, a ``main(config) -> dict`` and a call to
:func:`cli`. Bad settings fail before any computation: :func:`check_config` (called by :func:`cli`
and first thing by every ``main``) checks the seed, every number option and the ``--out`` folder,
and the parser rejects a malformed value at parse time; each problem is one ``error:`` line that
names the flag and the fix, and exit code 2.

Outputs are staged in a hidden folder inside ``--out`` and moved in place only when the step
succeeds, so a failing step (bad ``--data`` file, NaN loss, ...) never leaves half-written results
behind. A small manifest (``OUT/.outputs.json``) records what the last run wrote, so the next run
into the same folder removes the files it no longer writes (e.g. figures under ``--no-plots``)
while files it never wrote — a user's own, and the ``checkpoints`` that ``--resume`` reads — stay.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = [
    "ArgumentParser",
    "MANIFEST",
    "StepOutput",
    "check_checkpoints",
    "check_config",
    "check_out_dir",
    "checkpoint_errors",
    "cli",
    "parse_seed",
    "plt",
    "to_jsonable",
    "write_json",
    "write_text",
]

COMMON_HELP = {
    "out": "output folder (metrics.json, config.json, figures)",
    "seed": "random seed (every random draw derives from it)",
    "quick": "small, fast settings for a smoke run",
    "plots": "write figures",
}
SEED_MAX = 2**32 - 1  # what every PRNG the steps use accepts (JAX keys, numpy, torch)
INT_MAX = 2**31 - 1  # integer options (sizes, counts) must fit a 32-bit index
MANIFEST = ".outputs.json"  # what the last successful run wrote into its --out folder
CHECKPOINT_DIRS = ("checkpoints", "checkpoints.partial")  # written by training.fit; kept for --resume
_STAGING_PREFIX = ".staging-"
_MANIFEST_NOTE = "what the last run of this step wrote here; the next run removes what it does not rewrite"


# --- JSON ----------------------------------------------------------------------------------------


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


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and ``os.replace``.

    Readers see the old file or the new one, never a half-written one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as strict JSON (``NaN``/``Infinity`` are refused) via :func:`write_text`."""
    return write_text(path, json.dumps(value, indent=1, allow_nan=False) + "\n")


def _first_non_finite(value: Any) -> float | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for item in value:
            bad = _first_non_finite(item)
            if bad is not None:
                return bad
    return None


def _learning_rate_flags(config: Any) -> list[str]:
    if config is None or not dataclasses.is_dataclass(config):
        return []
    names = [f.name for f in dataclasses.fields(config)]
    return [_flag(n) for n in names if n == "lr" or n.endswith("_lr")]


def _check_finite(metrics: Mapping[str, Any], config: Any = None) -> None:
    """Refuse NaN/inf anywhere in the metrics (JSON cannot hold them), naming a fix the step has."""
    for key, value in metrics.items():
        bad = _first_non_finite(value)
        if bad is None:
            continue
        lr_flags = _learning_rate_flags(config)
        if lr_flags:
            hint = f"the run diverged; try a smaller learning rate ({', '.join(lr_flags)})"
        else:
            hint = (
                "the computation diverged or overflowed; check the scale of the input data "
                "(rescale very large or very small values) and the step's settings"
            )
        raise ValueError(f"metric {key!r} is {bad}: {hint}")


# --- checks --------------------------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_problem(name: str, tp: type, value: Any, default: Any = None) -> str | None:
    """Why ``value`` is not valid for the option ``name`` of type ``tp`` (``None`` when it is)."""
    if isinstance(value, bool) and tp is not bool:
        return f"must be {'a number' if tp is float else 'an integer'}, got {value!r}"
    if name == "seed":
        if not isinstance(value, int | np.integer) or not 0 <= value <= SEED_MAX:
            return f"must be an integer in [0, {SEED_MAX}] (2**32 - 1), got {value!r}; pass e.g. --seed 0"
    elif tp is int:
        if not isinstance(value, int | np.integer):
            return f"must be an integer, got {value!r}"
        if abs(value) > INT_MAX:
            return f"is out of range ({value}); pass an integer of magnitude at most {INT_MAX} (2**31 - 1)"
    elif tp is float:
        if not isinstance(value, int | float | np.integer | np.floating):
            return f"must be a number, got {value!r}"
        if not math.isfinite(value):
            example = f"such as the default {default!r}" if isinstance(default, int | float) else "like 0.001"
            return f"must be a finite number, got {value!r}; pass an ordinary number {example}"
    elif tp is bool and not isinstance(value, bool | np.bool_):
        return f"must be true or false, got {value!r}"
    elif tp is str and not isinstance(value, str):
        return f"must be a string, got {value!r}"
    return None


def _field_type(field: dataclasses.Field, hints: Mapping[str, Any]) -> tuple[type | None, bool]:
    """(scalar type, optional) of a config field, or (None, _) when the CLI cannot set it."""
    tp = hints[field.name]
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) != len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else None
    return (tp if tp in (int, float, str, bool) else None), optional


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a folder on the way that may not be searched
        return False


def check_out_dir(out: str | Path, *, flag: str = "--out") -> None:
    """Raise ``ValueError`` unless ``out`` is, or can be created as, a folder this process can write.

    Checked before any computation: ``out`` must not be a file, none of its parents may be a file,
    and the folder (or its nearest existing parent) must accept new files — probed by creating and
    removing an empty folder, which also catches read-only and virtual file systems (``/proc``).
    Nothing is left behind.
    """
    text = str(out)
    if not text.strip():
        raise ValueError(f"{flag} is empty; pass a folder path (it is created if missing)")
    path = Path(out)
    if _exists(path):
        if not path.is_dir():
            raise ValueError(
                f"{flag} {text} is an existing file, not a folder; pass a folder path (it is created "
                "if missing) or move the file away"
            )
        probe = path
    else:
        if path.is_symlink():
            raise ValueError(f"{flag} {text} is a broken symbolic link; remove it or pass another folder")
        probe = next((p for p in path.absolute().parents if _exists(p)), Path(path.absolute().anchor))
        if not probe.is_dir():
            raise ValueError(
                f"{flag} {text} cannot be created: {probe} is a file, not a folder; pass a path whose "
                "parents are folders"
            )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=probe))
    except OSError as err:
        raise ValueError(
            f"{flag} {text} is not writable: cannot create anything in {probe} "
            f"({err.strerror or type(err).__name__}); pass a folder you can write to"
        ) from None


def check_config(config: Any) -> None:
    """Check what every step shares before any computation; raise ``ValueError`` naming the flag.

    * ``--seed``: an integer in ``[0, 2**32 - 1]``;
    * every integer option: an integer of magnitude at most ``2**31 - 1``;
    * every number (float) option: finite (no NaN or infinity);
    * every option with ``CHOICES``: one of them;
    * ``--out``: see :func:`check_out_dir`.
    """
    cls = type(config)
    hints = typing.get_type_hints(cls)
    choices = getattr(cls, "CHOICES", {})
    for field in dataclasses.fields(config):
        tp, optional = _field_type(field, hints)
        value = getattr(config, field.name)
        if tp is None or (optional and value is None):
            continue
        problem = _value_problem(field.name, tp, value, field.default)
        if problem:
            raise ValueError(f"{_flag(field.name)} {problem}")
        allowed = choices.get(field.name)
        if allowed is not None and value not in allowed:
            raise ValueError(
                f"unknown {field.name.replace('_', ' ')} {value!r}; pass {_flag(field.name)} one of "
                f"{', '.join(map(str, allowed))}"
            )
    check_out_dir(config.out)


def _resume_source(out: Path) -> Path | None:
    """The folder ``--resume`` would continue from (the order ``training.fit`` looks in), or None.

    Raises ``training.CheckpointError`` (a ``ValueError``) for a folder that cannot be read."""
    from dlx_jax import training

    for name in ("checkpoints.partial", "checkpoints"):
        if training.latest_checkpoint(out / name) is not None:
            return out / name
    return None


def check_checkpoints(config: Any) -> None:
    """Checks of a training step's checkpoint folders, before any computation.

    ``OUT/checkpoints`` and ``OUT/checkpoints.partial`` must be folders when they exist. With
    ``--resume`` an unreadable checkpoint folder is one ``ValueError``, and when there is nothing to
    resume one ``note:`` line on stderr says the run starts from scratch.
    """
    out = Path(config.out)
    for name in CHECKPOINT_DIRS:
        if _exists(out / name) and not (out / name).is_dir():
            raise ValueError(
                f"{out / name} is a file, but training keeps its checkpoints in a folder of that name; "
                "move the file away or pass another --out"
            )
    if getattr(config, "resume", False) and _resume_source(out) is None:
        note = f"note: --resume: no checkpoint in {out / 'checkpoints'} yet; training from scratch"
        print(note, file=sys.stderr)


def _closed_loop_noise(unraisable: Any) -> bool:
    exc = unraisable.exc_value
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


@contextlib.contextmanager
def checkpoint_errors() -> Iterator[None]:
    """Around ``training.fit(..., resume=...)``: keep orbax's after-noise of a failed restore quiet.

    ``training`` turns an unreadable checkpoint into one ``training.CheckpointError`` naming the fix.
    But when orbax's restore fails on one array it closes its event loop while tensorstore still
    reads the others, and their completions report ``RuntimeError('Event loop is closed')`` through
    ``sys.unraisablehook`` (tracebacks, possibly after the error line). Exactly those reports are
    silenced while this block runs, and after a failed restore for the rest of the process.
    """
    from dlx_jax import training

    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _closed_loop_noise(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    failed_restore = False
    try:
        yield
    except training.CheckpointError:
        failed_restore = True
        raise
    finally:
        if not failed_restore and sys.unraisablehook is hook:
            sys.unraisablehook = previous


# --- staged outputs ------------------------------------------------------------------------------


def _plain_name(name: Any) -> bool:
    """A manifest entry this module may remove: one path component, not a kept or hidden name."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST, *CHECKPOINT_DIRS)
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and not name.startswith(_STAGING_PREFIX)
    )


def _read_manifest(folder: Path) -> list[str]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    files = data.get("files") if isinstance(data, dict) else None
    return [n for n in files if _plain_name(n)] if isinstance(files, list) else []


class StepOutput:
    """Stage a step's files and move them to ``config.out`` only if the step succeeds.

    Use as ``with StepOutput(config) as out: out.figure(fig, "name"); out.finish(metrics)``.

    On success the folder ends up holding exactly what this run wrote (``metrics.json``,
    ``config.json``, figures, ``out.path(...)`` items), plus the training checkpoints kept for
    ``--resume`` and any file that no run of a step wrote there (a user's own files stay). What the
    previous run wrote and this one did not (e.g. figures, after ``--no-plots``) is removed; the
    manifest ``.outputs.json`` records the names. Each item is moved with ``os.replace`` (atomic per
    item) after everything is staged. On failure nothing changes, and folders this object created
    are removed again.

    ``checkpoints=True`` (steps that train with ``training.fit(..., commit=False)``): after the
    outputs are in place, the finished run's ``checkpoints.partial`` replaces ``checkpoints``, so a
    run killed between training and writing its outputs never leaves new checkpoints beside old
    outputs (``--resume`` then restores the finished run and writes the outputs without training).
    """

    def __init__(self, config: Any, *, checkpoints: bool = False):
        self.final = Path(config.out)
        self.checkpoints = checkpoints
        self.plots = bool(getattr(config, "plots", True))
        self.config = config
        self.metrics: dict[str, Any] | None = None
        self.tmp: Path | None = None
        self._created: list[Path] = []

    def __enter__(self) -> StepOutput:
        check_out_dir(self.final)
        here = self.final.absolute()
        self._created = [p for p in (here, *here.parents) if not _exists(p)]
        self.final.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.final))
        return self

    def path(self, name: str) -> Path:
        """Staging path for an extra file or folder (checkpoints, arrays)."""
        assert self.tmp is not None, "use StepOutput as a context manager"
        if not _plain_name(name):
            raise ValueError(f"output name {name!r} must be a plain file or folder name")
        return self.tmp / name

    def figure(self, fig: Any, name: str) -> None:
        """Save a matplotlib figure as ``name.png`` (skipped under ``--no-plots``) and close it."""
        if self.plots:
            fig.savefig(self.path(f"{name}.png"), dpi=100, bbox_inches="tight")
        plt.close(fig)

    def finish(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Record the metrics (written on successful exit) and return them as plain JSON values."""
        self.metrics = to_jsonable(dict(metrics))
        _check_finite(self.metrics, self.config)
        return self.metrics

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        done = False
        try:
            if exc_type is not None:
                return
            if self.metrics is None:
                raise RuntimeError("StepOutput closed without finish(metrics)")
            config = to_jsonable(dataclasses.asdict(self.config))
            write_json(self.tmp / "metrics.json", self.metrics)
            write_json(self.tmp / "config.json", config)
            self._swap()
            if self.checkpoints:  # the finished run's checkpoints only now replace the old ones
                from dlx_jax import training

                training.commit_checkpoints(self.final / "checkpoints")
            done = True
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not done:
                for folder in self._created:  # deepest first; stops at the first that is not empty
                    try:
                        folder.rmdir()
                    except OSError:
                        break

    def _swap(self) -> None:
        assert self.tmp is not None
        new = sorted(p.name for p in self.tmp.iterdir())
        old = _read_manifest(self.final)
        trash = Path(tempfile.mkdtemp(prefix=".replaced-", dir=self.tmp))  # removed with the staging folder
        # first the union, so that a crash half-way through leaves nothing the next run cannot clean up
        write_json(self.final / MANIFEST, {"note": _MANIFEST_NOTE, "files": sorted({*old, *new})})
        for name in new:
            src, dst = self.tmp / name, self.final / name
            if os.path.lexists(dst) and (src.is_dir() or (dst.is_dir() and not dst.is_symlink())):
                os.replace(dst, trash / name)  # os.replace cannot put a folder over a file or vice versa
            os.replace(src, dst)
        for name in sorted(set(old) - set(new)):
            if os.path.lexists(self.final / name):
                os.replace(self.final / name, trash / name)
        write_json(self.final / MANIFEST, {"note": _MANIFEST_NOTE, "files": new})


# --- the command line ----------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one ``error: ...`` line (naming the flag) and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def _option_type(name: str, tp: type, default: Any) -> Callable[[str], Any]:
    """The argparse ``type=`` for an int/float option: parse, then :func:`_value_problem`."""

    def parse(text: str) -> Any:
        try:
            value = tp(text)
        except (ValueError, OverflowError):
            kind = "an integer" if tp is int else "a number"
            hint = " (write integers without a decimal point or exponent)" if tp is int else ""
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}{hint}") from None
        problem = _value_problem(name, tp, value, default)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = tp.__name__
    return parse


def parse_seed(text: str) -> int:
    """argparse ``type=`` for ``--seed`` (an integer in ``[0, 2**32 - 1]``), shared with the runner."""
    return _option_type("seed", int, 0)(text)


def build_parser(config_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--kebab-case`` flag per scalar config field."""
    parser = ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    helps = getattr(config_cls, "HELP", {})
    for field in dataclasses.fields(config_cls):
        tp, _ = _field_type(field, hints)
        if tp is None:
            continue
        flag = _flag(field.name)
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
                type=_option_type(field.name, tp, field.default) if tp in (int, float) else tp,
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
    """Parse ``argv`` into ``config_cls``, check it, run ``main``, print a summary; return the exit code.

    A malformed flag value, or bad input found by :func:`check_config` or ``main`` (``ValueError``,
    ``FileNotFoundError``), becomes one ``error:`` line and exit code 2; ``--help`` returns 0.
    """
    parser = build_parser(config_cls, description)
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad flag (2; the parser printed the error line)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    config = config_cls(**vars(args))
    start = time.perf_counter()
    try:
        check_config(config)
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
