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
# # Step 1 — the normal distribution
#
# The book's `step01`: `norm_dist.py` and `norm_param.py` (the density and how μ and σ move it),
# `sample_avg.py` and `sample_sum.py` (the central limit theorem). One call runs `experiments.step01_normal`
# in quick mode; its figures and metrics follow.

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
import numpy as np

from experiments import _notebook, step01_normal

cfg = _notebook.config(step01_normal)
metrics = step01_normal.main(cfg)

# %% [markdown]
# `norm_dist.py` and `norm_param.py`: N(0, 1), then μ ∈ {−3, 0, 5} and σ ∈ {0.5, 1, 2}.

# %%
_notebook.show(cfg, "normal_pdf", "mu_sigma_sweep")

# %% [markdown]
# `sample_avg.py`: the mean of N uniforms for N = 1, 2, 4, 10 (the book draws one N at a time), and
# `sample_sum.py`: the sum of N = 5 uniforms beside N(N/2, N/12).

# %%
_notebook.show(cfg, "clt_mean", "clt_sum_n5")

# %% [markdown]
# The book prints no numbers in step 1; its formulas give these.

# %%
_notebook.compare(
    [
        ("p(0) of N(0, 1) = 1/√(2π)", 1 / np.sqrt(2 * np.pi), metrics["pdf_at_0"]),
        ("sum of 5 uniforms: mean N/2", 2.5, metrics["clt_sum5_mean"]),
        ("sum of 5 uniforms: std √(N/12)", np.sqrt(5 / 12), metrics["clt_sum5_std"]),
    ]
)
