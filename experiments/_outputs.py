"""Where a step's results go: atomic writes, strict JSON, the ``--out`` folder and staged outputs.

* :func:`write_text` / :func:`write_json` / :func:`to_jsonable` — atomic writes of plain JSON values;
* :func:`check_out_dir` — ``--out`` is, or can be created as, a folder this process can write;
* :func:`check_finite` — no NaN/inf in the metrics, with a fix the step has;
* :func:`run_lock` — one run at a time per ``--out`` folder (a lock held for the run's life);
* :class:`StepOutput` — files staged in a hidden folder inside ``--out`` and moved in place only
  when the step succeeds, so a failing step never leaves half-written results behind. A small
  manifest (``OUT/.outputs.json``) records what the last run wrote, so the next run into the same
  folder removes the files it no longer writes (e.g. figures under ``--no-plots``) while files it
  never wrote — a user's own, and the ``checkpoints`` that ``--resume`` reads — stay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHECKPOINT_DIRS",
    "MANIFEST",
    "StepOutput",
    "check_finite",
    "check_out_dir",
    "exists",
    "is_timing",
    "run_lock",
    "to_jsonable",
    "without_timings",
    "write_json",
    "write_text",
]

MANIFEST = ".outputs.json"  # what the last successful run wrote into its --out folder
CHECKPOINT_DIRS = ("checkpoints", "checkpoints.partial")  # written by training.fit; kept for --resume
_STAGING_PREFIX = ".staging-"
_MANIFEST_NOTE = "what the last run of this step wrote here; the next run removes what it does not rewrite"


# --- JSON ----------------------------------------------------------------------------------------


def is_timing(step: str, key: str) -> bool:
    """Whether metric ``key`` of ``step`` is a timing, the only kind of metric that may differ between
    two runs with the same seed: keys ending in ``_seconds`` or ``_s``, and in the benchmarks the
    ``ratio_*`` keys (ratios of timings) and the ``*_loadavg_*`` keys (the load beside them)."""
    if key.endswith(("_seconds", "_s")):
        return True
    return step == "benchmarks" and (key.startswith("ratio_") or "_loadavg_" in key)


def without_timings(step: str, value: Any) -> Any:
    """``value`` (metrics, or anything inside them) with every timing key (:func:`is_timing`) left out."""
    if isinstance(value, dict):
        return {k: without_timings(step, v) for k, v in value.items() if not is_timing(step, k)}
    if isinstance(value, list):
        return [without_timings(step, v) for v in value]
    return value


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


# --- finite metrics ------------------------------------------------------------------------------


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
    return ["--" + n.replace("_", "-") for n in names if n == "lr" or n.endswith("_lr")]


def check_finite(metrics: Mapping[str, Any], config: Any = None) -> None:
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


# --- the --out folder ----------------------------------------------------------------------------


def exists(path: Path) -> bool:
    """``path.exists()``, but ``False`` where a folder on the way may not be searched."""
    try:
        return path.exists()
    except OSError:
        return False


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _check_name_lengths(text: str, path: Path, nearest: Path, flag: str) -> None:
    """One error for a folder name (or a whole path) longer than the file system takes."""
    limit = _name_max(nearest if nearest.is_dir() else nearest.parent)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise ValueError(
                f"{flag} {text[:60]}...: the folder name {part[:20]}... is {len(os.fsencode(part))} bytes "
                f"long, more than this file system allows ({limit}); pick a shorter name"
            )
    if len(os.fsencode(str(path.absolute()))) >= 4096:
        raise ValueError(
            f"{flag} {text[:60]}...: the path is too long (4096 bytes or more); pick a shorter one"
        )


def check_out_dir(out: str | Path, *, flag: str = "--out") -> None:
    """Raise ``ValueError`` unless ``out`` is, or can be created as, a folder this process can write.

    Checked before any computation: ``out`` must not be a file, none of its parents may be a file,
    no name on the way may be longer than the file system takes, and the folder (or its nearest
    existing parent) must accept new files — probed by creating and removing an empty folder,
    which also catches read-only and virtual file systems (``/proc``). Nothing is left behind.
    """
    text = str(out)
    if not text.strip():
        raise ValueError(f"{flag} is empty; pass a folder path (it is created if missing)")
    path = Path(out)
    nearest = next((p for p in path.absolute().parents if exists(p)), Path(path.absolute().anchor))
    _check_name_lengths(text, path, nearest, flag)
    if exists(path):
        if not path.is_dir():
            raise ValueError(
                f"{flag} {text} is an existing file, not a folder; pass a folder path (it is created "
                "if missing) or move the file away"
            )
        probe = path
    else:
        if path.is_symlink():
            raise ValueError(f"{flag} {text} is a broken symbolic link; remove it or pass another folder")
        probe = nearest
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


def _created_folders(folder: Path) -> list[Path]:
    """The folders (deepest first) that ``mkdir(parents=True)`` of ``folder`` would create."""
    here = folder.absolute()
    return [p for p in (here, *here.parents) if not exists(p)]


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; stops at the first that is not empty
        try:
            folder.rmdir()
        except OSError:
            break


def is_primary() -> bool:
    """Whether this process writes the step's outputs: always, except in a multi-process JAX run
    (``--coordinator``...), where process 0 writes and the others compute the same numbers."""
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized():
        return True
    return jax.process_index() == 0


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder ``out`` (``fcntl.flock``) for the run's life.

    A second run into the same folder while the first holds it raises ``ValueError`` at once,
    instead of failing later in the middle of the first run's checkpoints. The folder is created
    if missing and removed again (with the parents created for it) when the run leaves it empty.
    The lock is on the folder itself, so nothing is written for it, and the system releases it
    when the process ends, however it ends.
    """
    folder = Path(out)
    created = _created_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    refused = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                refused = True  # the folder is the other run's: leave it as it is
                raise ValueError(
                    f"another run is writing to {out}; wait for it to finish or pick another --out"
                ) from None
            # a file system without flock (some network mounts): run unguarded, as before
        yield
    finally:
        os.close(fd)  # releases the lock
        if not refused:
            _remove_empty(created)


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
        self.primary = True
        self.tmp: Path | None = None
        self._created: list[Path] = []

    def __enter__(self) -> StepOutput:
        check_out_dir(self.final)
        self.primary = is_primary()
        if not self.primary:  # another process of a multi-process run: stage aside, keep nothing
            self.tmp = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX))
            return self
        self._created = _created_folders(self.final)
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
        import matplotlib.pyplot as plt

        if self.plots:
            fig.savefig(self.path(f"{name}.png"), dpi=100, bbox_inches="tight")
        plt.close(fig)

    def finish(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Record the metrics (written on successful exit) and return them as plain JSON values."""
        self.metrics = to_jsonable(dict(metrics))
        check_finite(self.metrics, self.config)
        return self.metrics

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        done = False
        try:
            if exc_type is not None or not self.primary:
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
                _remove_empty(self._created)

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
