"""The command line of every step: a ``--kebab-case`` flag per config field, checked before any work.

Every step module is a frozen ``@dataclass`` config, a ``main(config) -> dict`` and a call to
:func:`cli`. Bad settings fail before any computation: :func:`check_config` (called by :func:`cli`
and first thing by every ``main``) checks the seed, every number option (finite; integers within
32 bits and within the config's ``LIMITS``), every option with ``CHOICES`` and the ``--out``
folder, and the parser rejects a malformed value at parse time; each problem is one ``error:``
line that names the flag and the fix, and exit code 2. Ctrl-C is one line and exit code 130; a
second run into an ``--out`` folder that a run is writing is refused (:func:`_outputs.run_lock`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from experiments import _fitting, _outputs

__all__ = [
    "COMMON_HELP",
    "EXIT_INTERRUPTED",
    "INT_MAX",
    "SEED_MAX",
    "ArgumentParser",
    "build_parser",
    "check_config",
    "cli",
    "interrupted_message",
    "parse_seed",
    "summary",
]

COMMON_HELP = {
    "out": "output folder (metrics.json, config.json, figures)",
    "seed": "random seed (every random draw derives from it)",
    "quick": "small, fast settings for a smoke run",
    "plots": "write figures (PNG)",
}
NEGATED_HELP = {"plots": "do not write figures (PNG); metrics only"}  # the help of --no-<flag>
SEED_MAX = 2**32 - 1  # what every PRNG the steps use accepts (JAX keys, numpy, torch)
INT_MAX = 2**31 - 1  # integer options (sizes, counts) must fit a 32-bit index
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one ``error: ...`` line (naming the flag) and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


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


def _limit_problem(name: str, value: Any, limits: Mapping[str, tuple[int, str]]) -> str | None:
    """Why ``value`` is more than the run can hold (``LIMITS = {name: (maximum, why)}``), or None."""
    if name not in limits or not isinstance(value, int | np.integer):
        return None
    maximum, why = limits[name]
    if value <= maximum:
        return None
    return f"{_flag(name)} {value} is too large for this step ({why}); pass {_flag(name)} {maximum:,} or less"


def check_config(config: Any) -> None:
    """Check what every step shares before any computation; raise ``ValueError`` naming the flag.

    * ``--seed``: an integer in ``[0, 2**32 - 1]``;
    * every integer option: an integer of magnitude at most ``2**31 - 1``, and at most the
      maximum the config's ``LIMITS`` gives it (sizes whose arrays must fit in memory);
    * every number (float) option: finite (no NaN or infinity);
    * every option with ``CHOICES``: one of them;
    * ``--out``: see :func:`experiments._outputs.check_out_dir`.
    """
    cls = type(config)
    hints = typing.get_type_hints(cls)
    choices = getattr(cls, "CHOICES", {})
    limits = getattr(cls, "LIMITS", {})
    for field in dataclasses.fields(config):
        tp, optional = _field_type(field, hints)
        value = getattr(config, field.name)
        if tp is None or (optional and value is None):
            continue
        problem = _value_problem(field.name, tp, value, field.default)
        if problem:
            raise ValueError(f"{_flag(field.name)} {problem}")
        too_large = _limit_problem(field.name, value, limits)
        if too_large:
            raise ValueError(too_large)
        allowed = choices.get(field.name)
        if allowed is not None and value not in allowed:
            raise ValueError(
                f"unknown {field.name.replace('_', ' ')} {value!r}; pass {_flag(field.name)} one of "
                f"{', '.join(map(str, allowed))}"
            )
    _outputs.check_out_dir(config.out)


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
        if tp is bool and field.default is True:
            # the default first: a --no-<flag> switch shows no "(default: True)" in --help
            parser.set_defaults(**{field.name: True})
            parser.add_argument(
                "--no-" + field.name.replace("_", "-"),
                dest=field.name,
                action="store_false",
                help=NEGATED_HELP.get(field.name, f"turn off: {text}"),
                default=argparse.SUPPRESS,
            )
        elif tp is bool:
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


def interrupted_message(config: Any) -> str:
    """The one line a Ctrl-C prints: how to continue (``--resume``) or that nothing was written."""
    if hasattr(config, "resume"):
        return "interrupted; continue with --resume"
    return "interrupted; no outputs were written (run the step again)"


def cli(
    config_cls: type,
    main: Callable[[Any], dict],
    argv: list[str] | None = None,
    description: str | None = None,
) -> int:
    """Parse ``argv`` into ``config_cls``, check it, run ``main``, print a summary; return the exit code.

    A malformed flag value, or bad input found by :func:`check_config` or ``main`` (``ValueError``,
    ``FileNotFoundError``), becomes one ``error:`` line and exit code 2; ``--help`` returns 0.
    ``main`` runs holding the ``--out`` folder's lock (another run into it is one ``error:`` line);
    Ctrl-C is one line and exit code 130, leaving the checkpoints that ``--resume`` continues from.
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
        with _run_lock(config), _fitting.interrupts_remembered():
            metrics = main(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted_message(config), file=sys.stderr)
        return EXIT_INTERRUPTED
    line = summary(metrics, getattr(config_cls, "SUMMARY", ()))
    print(f"{line} ({time.perf_counter() - start:.1f} s) -> {config.out}")
    return 0


def _run_lock(config: Any) -> Any:
    """The ``--out`` folder's lock, held by the process that writes it: in a multi-process run
    (``--process-id`` or ``DLX_PROCESS_ID``) only process 0 takes it."""
    import os

    process_id = getattr(config, "process_id", None)
    if process_id is None and os.environ.get("DLX_PROCESS_ID", "").strip().isdigit():
        process_id = int(os.environ["DLX_PROCESS_ID"])
    if process_id not in (None, 0):
        return contextlib.nullcontext()
    return _outputs.run_lock(config.out)


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
