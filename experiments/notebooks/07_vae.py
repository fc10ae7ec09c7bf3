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
# # Step 7 — the variational autoencoder
#
# The book's `step07/vae.py` on the embedded MNIST digits, in quick mode (a few epochs on 1,000 digits: a
# smoke run). Drop `quick=True` (run `python -m experiments.step07_vae`) for the book's 30 epochs.

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
from experiments import _book, _notebook, step07_vae

cfg = _notebook.config(step07_vae)
metrics = step07_vae.main(cfg)

# %%
_notebook.compare(
    [
        ("loss per image after the last epoch", _book.PRINTED["step07_final_loss"], metrics["final_loss"]),
    ]
)
print("(the book: 30 epochs on 60,000 digits; here: quick mode)")

# %%
_notebook.show(cfg, "loss_curve", "reconstructions", "samples")
