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
# # Step 8 — the hierarchical VAE
#
# The book's `step08/hvae.py` (two latent levels) on the embedded MNIST digits, in quick mode.

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
from experiments import _book, _notebook, step08_hvae

cfg = _notebook.config(step08_hvae)
metrics = step08_hvae.main(cfg)

# %%
_notebook.compare(
    [
        ("loss per image after the last epoch", _book.PRINTED["step08_final_loss"], metrics["final_loss"]),
    ]
)
print("(the book: 30 epochs on 60,000 digits; here: quick mode)")

# %%
_notebook.show(cfg, "loss_curve", "reconstructions", "samples")
