"""Temporary re-exports for the diffusion files until issue 13's branches are merged; remove then.

The plumbing lives by topic now: :mod:`experiments._cli` (command line, option checks),
:mod:`experiments._outputs` (atomic writes, staged outputs, the ``--out`` lock),
:mod:`experiments._fitting` (the ``training.fit`` wrapper and checkpoint-folder checks) and
:mod:`experiments._plots` (matplotlib, figure helpers). Nothing else imports this module.
"""

from experiments._cli import cli
from experiments._fitting import check_checkpoints
from experiments._outputs import StepOutput
from experiments._plots import plt

__all__ = ["StepOutput", "check_checkpoints", "cli", "plt"]
