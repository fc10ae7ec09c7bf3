"""What the notebooks in ``experiments/notebooks/`` share: a step's quick config, its figures shown inline,
and the book's numbers printed beside the project's.

The notebooks run each step's own ``main`` in quick mode (no code is copied into them). Two environment
variables let the test suite run them small and out of the way, and change nothing for a reader:

* ``DLX_NOTEBOOK_OUT``: the folder the steps write to (default ``outputs/notebooks``);
* ``DLX_NOTEBOOK_SETTINGS``: a JSON object of config overrides applied to every step that has those
  fields (the suite passes smaller diffusion sizes, e.g. ``{"num_timesteps": 20}``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["compare", "config", "show"]


def config(step: ModuleType, **overrides: Any) -> Any:
    """The step's ``Config`` in quick mode writing to ``$DLX_NOTEBOOK_OUT/<step>``, with ``overrides``
    and then the fields of ``$DLX_NOTEBOOK_SETTINGS`` that the config has."""
    name = step.__name__.rsplit(".", 1)[-1]
    out = Path(os.environ.get("DLX_NOTEBOOK_OUT", "outputs/notebooks")) / name
    cfg = dataclasses.replace(step.Config(), out=str(out), quick=True, **overrides)
    settings = json.loads(os.environ.get("DLX_NOTEBOOK_SETTINGS") or "{}")
    fields = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in settings.items() if k in fields})


def show(cfg: Any, *names: str) -> None:
    """Display the step's figures ``OUT/<name>.png`` inline, or every figure it wrote when no name is
    given (in a notebook; outside one, IPython prints a line each)."""
    from IPython.display import Image, display

    paths = [Path(cfg.out) / f"{name}.png" for name in names] or sorted(Path(cfg.out).glob("*.png"))
    for path in paths:
        display(Image(filename=str(path)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def compare(rows: Iterable[tuple[str, Any, Any]]) -> None:
    """Print ``quantity | the book prints | the project`` one row each."""
    rows = [(what, _fmt(book), _fmt(ours)) for what, book, ours in rows]
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  the book prints  →  this project")
    for what, book, ours in rows:
        print(f"{what:<{width}}  {book}  →  {ours}")
