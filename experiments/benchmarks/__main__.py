"""``python -m experiments.benchmarks``: see :mod:`experiments.benchmarks`."""

from experiments import benchmarks
from experiments._cli import cli

raise SystemExit(cli(benchmarks.Config, benchmarks.main, description=benchmarks.__doc__))
