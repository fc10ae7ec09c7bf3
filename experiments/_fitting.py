"""Training a step's model: the one wrapper of :func:`dlx_jax.training.fit` and its folder checks.

* :func:`check_checkpoints` — before any computation, ``OUT/checkpoints`` and
  ``OUT/checkpoints.partial`` must be folders; ``--resume`` with nothing to resume says so once;
* :func:`train` — ``training.fit`` into ``OUT/checkpoints`` (``--resume`` aware), timed;
* :func:`checkpoint_errors` — keeps orbax's after-noise of a failed restore off stderr;
* :func:`data_mesh` — the device mesh a step trains on (``--devices``), after joining a
  multi-process run (``--coordinator``, ``--num-processes``, ``--process-id``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax

from dlx_jax import training
from experiments import _outputs

__all__ = [
    "ALLOW_LR_CHANGE_HELP",
    "MESH_HELP",
    "check_checkpoints",
    "checkpoint_errors",
    "data_mesh",
    "interrupts_remembered",
    "mesh_fingerprint",
    "train",
]

ALLOW_LR_CHANGE_HELP = (
    "with --resume: continue the checkpointed run at this --lr although it was trained at another (a "
    "deliberate change from the restored epoch on, e.g. a lower rate for the last epochs; recorded as "
    "training_changes)"
)

MESH_HELP = {
    "devices": "devices of the data mesh (default: all JAX sees); each trains on an equal share of every "
    "batch, so the batch size must divide by it",
    "coordinator": "multi-process run: HOST:PORT of process 0 (with --num-processes and --process-id)",
    "num_processes": "multi-process run: how many processes take part",
    "process_id": "multi-process run: this process's number, 0 .. num-processes - 1 (0 writes the outputs)",
}


def data_mesh(config: Any):
    """The 1-D data mesh of ``config.devices`` devices (all when ``None``), after joining the
    multi-process run that ``config`` names, if any (see :mod:`dlx_jax.training._mesh`).

    Call it before any other JAX computation of the step (a process joins a run only then).

    Raises:
        ValueError: bad multi-process settings, or more devices than JAX sees.
    """
    training.initialize_distributed(
        getattr(config, "coordinator", None),
        getattr(config, "num_processes", None),
        getattr(config, "process_id", None),
    )
    return training.data_mesh(getattr(config, "devices", None))


def mesh_fingerprint(mesh: Any) -> dict[str, int]:
    """The resume fingerprint's share of the mesh: ``{"devices": D}`` when ``D > 1`` (the order of
    floating-point sums then differs from one device), else nothing (one device changes no number)."""
    n = int(mesh.devices.size)
    return {"devices": n} if n > 1 else {}


def _resume_source(out: Path) -> Path | None:
    """The folder ``--resume`` would continue from (the order ``training.fit`` looks in), or None.

    Raises ``training.CheckpointError`` (a ``ValueError``) for a folder that cannot be read."""
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
    for name in _outputs.CHECKPOINT_DIRS:
        if _outputs.exists(out / name) and not (out / name).is_dir():
            raise ValueError(
                f"{out / name} is a file, but training keeps its checkpoints in a folder of that name; "
                "move the file away or pass another --out"
            )
    if getattr(config, "allow_lr_change", False) and not getattr(config, "resume", False):
        raise ValueError(
            "--allow-lr-change only acts with --resume (it lets a checkpointed run continue at a new --lr); "
            "add --resume, or drop --allow-lr-change"
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
    ``sys.unraisablehook`` (tracebacks, possibly after the error line and after the process has
    begun to exit). Exactly those reports are silenced while this block runs; the previous hook
    comes back when the block ends, except after a failed restore: then the filter stays, because
    the reports arrive from tensorstore's own (non-Python) threads at a time nothing in Python can
    wait for (joining the Python threads first was tried: the noise still came, 1 run in 3). The
    filter passes every other report on to the previous hook.
    """
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


_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def interrupts_remembered() -> Iterator[None]:
    """Ctrl-C raises ``KeyboardInterrupt`` as usual and is also remembered for the run.

    A ``KeyboardInterrupt`` that lands in code which swallows it (a finalizer, a library's callback
    or event loop) was lost and the run went on to the end; :func:`train` raises it again before its
    next epoch, once the last epoch's checkpoint is complete. :func:`experiments._cli.cli` wraps
    every step in it; elsewhere (tests, the library) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    _INTERRUPTED.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _INTERRUPTED.clear()


def _stops_when_interrupted(epoch_fn: Callable) -> Callable:
    """``epoch_fn`` that first raises a remembered Ctrl-C (:func:`interrupts_remembered`)."""

    def epoch(*args: Any) -> Any:
        if _INTERRUPTED.is_set():
            raise KeyboardInterrupt
        return epoch_fn(*args)

    return epoch


def train(
    config: Any,
    key: jax.Array,
    state: training.TrainState,
    data: Any,
    *,
    epoch_fn: Callable,
    epochs: int,
    fingerprint: Mapping[str, Any],
    evaluate: Callable | None = None,
    eval_every: int = 1,
    progress: bool = True,
) -> tuple[training.TrainState, dict[str, list], float]:
    """:func:`dlx_jax.training.fit` into ``OUT/checkpoints`` (``--resume`` aware); ``(state, history, s)``.

    The run trains into ``OUT/checkpoints.partial``, which replaces ``OUT/checkpoints`` only when the
    step's outputs are written (``StepOutput(config, checkpoints=True)``); ``config.resume``
    continues an interrupted run (or a finished one, longer, or one killed after training: then
    without training again) with the same numbers as an uninterrupted run, and refuses a checkpoint
    made under another ``fingerprint`` (except a new ``lr`` with ``--allow-lr-change``, recorded in
    ``history["changes"]``). A diverged run raises ``ValueError`` before anything is
    written. ``progress=False``: no bar of ``fit``'s own (the step draws one).
    """
    start = time.perf_counter()
    with checkpoint_errors():  # a corrupted checkpoint: one ValueError naming the fix
        state, history = training.fit(
            key,
            state,
            data,
            epoch_fn=_stops_when_interrupted(epoch_fn),
            epochs=epochs,
            checkpoint_dir=Path(config.out) / "checkpoints",
            resume=bool(getattr(config, "resume", False)),
            fingerprint=fingerprint,
            may_change=("lr",) if getattr(config, "allow_lr_change", False) else (),
            evaluate=evaluate,
            eval_every=eval_every,
            progress=progress,
            desc=Path(config.out).name,
            commit=False,  # StepOutput(checkpoints=True) commits them once the outputs are written
        )
    return state, history, time.perf_counter() - start
