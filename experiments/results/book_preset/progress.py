"""Where a ``--preset book`` run of step 9 or 10 stands, from its newest checkpoint (no arrays read):
``progress_<step>.json`` (epochs and optimizer steps reached, the per-epoch mean losses, the book's
printed losses on the same axis) and ``loss_vs_book_<step>.png`` (the step's own figure of a finished
run, drawn for the epochs done so far).

    python experiments/results/book_preset/progress.py RUN_DIR STEP [DEST]

``RUN_DIR`` is the run's ``--out`` (``checkpoints.partial`` while it trains, ``checkpoints`` once
done); ``STEP`` is ``step09_diffusion`` or ``step10_guidance``; ``DEST`` defaults to this folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dlx_jax import training
from dlx_jax.training._checkpoints import partial_dir, restore_meta
from experiments import _diffusion_book


class _Figures:
    """The one method of a step's output object that ``_diffusion_book.loss_figure`` calls."""

    def __init__(self, dest: Path, step: str) -> None:
        self.dest, self.step = dest, step

    def figure(self, fig, name: str) -> None:
        fig.savefig(self.dest / f"{name}_{self.step}.png", dpi=110, bbox_inches="tight")


def _over_book_epochs(losses: list[float], per: int, book_epochs: list[int]) -> list[dict]:
    """Per printed book epoch k (469 optimizer steps of full MNIST; its printed loss is that span's mean),
    the mean of this run's epoch losses whose middle step falls in the same span of optimizer steps."""
    span = _diffusion_book.BOOK_STEPS_PER_EPOCH
    rows = []
    for k in book_epochs:
        lo, hi = span * (k - 1), span * k
        inside = [v for e, v in enumerate(losses) if lo <= (e + 0.5) * per < hi]
        if inside:
            mean = sum(inside) / len(inside)
            rows.append({"book_epoch": k, "steps": [lo, hi], "epochs": len(inside), "mean": mean})
    return rows


def main() -> None:
    run, step = Path(sys.argv[1]), sys.argv[2]
    dest = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).parent
    if step not in _diffusion_book.BOOK_LOSSES:
        raise SystemExit(f"STEP must be one of {', '.join(_diffusion_book.BOOK_LOSSES)}, got {step!r}")
    folder = partial_dir(run / "checkpoints")
    if training.latest_checkpoint(folder) is None:
        folder = run / "checkpoints"
    last = training.latest_checkpoint(folder)
    if last is None:
        raise SystemExit(f"no checkpoint in {run}/checkpoints(.partial): has the run started?")
    meta = restore_meta(folder, last)
    fp, history = meta["fingerprint"], meta["history"]
    n, batch = int(fp["n_train"]), int(fp["batch_size"])
    per = _diffusion_book.steps_per_epoch(n, batch)
    total = _diffusion_book.epochs_for(_diffusion_book.BOOK_TRAIN_STEPS, n, batch)
    progress = {
        "run": str(run),
        "finished": folder.name == "checkpoints",
        "epochs_done": int(meta["epoch"]),
        "epochs_total": total,
        "steps_done": int(meta["epoch"]) * per,
        "steps_total": total * per,
        "fingerprint": fp,
        "loss_history": history["loss"],
        "epoch_seconds": history.get("epoch_seconds", []),
        **_diffusion_book.loss_metrics(step, history, n, batch),
    }
    book_epochs = [k for k, _ in _diffusion_book.BOOK_LOSSES[step]]
    progress["loss_over_book_epochs"] = _over_book_epochs(history["loss"], per, book_epochs)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"progress_{step}.json").write_text(json.dumps(progress, indent=1) + "\n", encoding="utf-8")
    _diffusion_book.loss_figure(_Figures(dest, step), step, history, n, batch)
    print(f"{step}: epoch {progress['epochs_done']}/{total}, step {progress['steps_done']}/{total * per}, "
          f"last loss {history['loss'][-1]:.5f} -> {dest}")  # fmt: skip


if __name__ == "__main__":
    main()
