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
# # Step 2 — maximum likelihood
#
# The book's `step02`: `hist.py` (the heights in `height.txt`), `fit.py` (the normal fitted by maximum
# likelihood), `generate.py` (new data from the fit) and `prob.py` (probabilities from its CDF). The book's
# `height.txt` ships inside `dlx_jax` and is step 2's default data.

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
from experiments import _book, _notebook, step02_mle

heights = data.load_book_heights()
print(heights.shape)

cfg = _notebook.config(step02_mle)
metrics = step02_mle.main(cfg)

# %%
_notebook.show(cfg, "mle_fit", "generated_vs_original", "cdf_probabilities")

# %%
printed = _book.PRINTED
_notebook.compare(
    [
        ("xs.shape", printed["step02_shape"], heights.shape),
        ("p(x <= 160)", printed["step02_p_le_160"], metrics["p_le_a"]),
        ("p(x > 180)", printed["step02_p_gt_180"], metrics["p_gt_b"]),
    ]
)
print(f"MLE fit: mu = {metrics['mu']:.4f} cm, sigma = {metrics['sigma']:.4f} cm (n = {metrics['n']})")
