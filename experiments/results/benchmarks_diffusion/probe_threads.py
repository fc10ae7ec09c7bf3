"""Probe: the book UNet's JAX train step (batch 128, hybrid convs) for several kernel-gradient chunk
sizes, medians of 4 alternating rounds. Run from the repository root:

    uv run python experiments/results/benchmarks_diffusion/probe_threads.py 4,8,16,32
    taskset -c 0 uv run python experiments/results/benchmarks_diffusion/probe_threads.py 4   # one core
"""

import statistics
import sys
import time

import jax

from dlx_jax import unet
from dlx_jax.unet import _convs
from experiments.benchmarks import diffusion as bench

chunks = [int(c) for c in (sys.argv[1] if len(sys.argv) > 1 else "4").split(",")]
x = bench._images(128)
init = unet.init(jax.random.key(0), unet.UNet(features=64))
runs = {}
for c in chunks:
    _convs.KERNEL_GRAD_CHUNK = c  # read when the step is traced
    runs[c] = bench._jax_train_step("hybrid", 64, init, x, 0)
times = {c: [] for c in chunks}
for _ in range(4):
    for c in chunks:
        start = time.perf_counter()
        jax.block_until_ready(runs[c]())
        times[c].append(time.perf_counter() - start)
for c in chunks:
    print(f"chunk {c}: median {statistics.median(times[c]):.3f} s", [round(t, 2) for t in times[c]])
