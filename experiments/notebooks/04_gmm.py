# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Step 4 — Gaussian mixture models
#
# The book's `step04`: `old_faithful.py` (the data), `gmm_sampling.py` (samples from the book's 2-component
# mixture) and `gmm.py` (its density).

# %%
# On a hosted notebook service (Colab, Kaggle, ...) install this project first; on a checkout, nothing.
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("dlx_jax") is None:  # e.g. %env DLX_JAX_PIP=git+https://github.com/OWNER/dlx-jax
    source = os.environ.get("DLX_JAX_PIP")  # a pip source of this project: a git URL or an uploaded wheel
    if not source:
        raise RuntimeError("dlx_jax is not installed: set DLX_JAX_PIP to a pip source of this project, rerun")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], check=True)

# %%
from dlx_jax import data
from experiments import _notebook, step04_gmm

xs = data.load_old_faithful()
print(xs.shape)
print(xs[0])
print(xs[1])

cfg = _notebook.config(step04_gmm)
metrics = step04_gmm.main(cfg)

# %%
_notebook.show(cfg, "gmm_samples", "gmm_density")

# %%
_notebook.compare(
    [
        ("xs.shape", (272, 2), xs.shape),
        ("xs[0]", [3.6, 79.0], xs[0].tolist()),
        ("xs[1]", [1.8, 54.0], xs[1].tolist()),
        ("fraction of samples from component 2 (φ)", 0.65, metrics["sample_fraction_component_1"]),
    ]
)
