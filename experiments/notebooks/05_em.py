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
# # Step 5 — the EM algorithm
#
# Notebook 05's KL cell, then the book's `step05/em.py` (EM on Old Faithful from the book's start, printing
# the mean log-likelihood each iteration) and `generate.py` (samples from the fit).

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
from experiments import _book, _notebook, step05_em

cfg = _notebook.config(step05_em)
metrics = step05_em.main(cfg)

# %%
printed = _book.PRINTED
_notebook.compare(
    [
        ("KL(p || q), q = (0.6, 0.4)", printed["step05_kl"][0], metrics["book_kl"][0]),
        ("KL(p || q), q = (0.2, 0.8)", printed["step05_kl"][1], metrics["book_kl"][1]),
        ("KL(p || q), q = (0.7, 0.3)", printed["step05_kl"][2], metrics["book_kl"][2]),
    ]
)
book_trace = printed["step05_em_log_likelihood"]
ours = [round(float(v), 3) for v in metrics["log_likelihood_trace"][: len(book_trace)]]
_notebook.compare([("em.py's log-likelihoods", book_trace, ours)])

# %%
_notebook.show(cfg, "log_likelihood", "em_contour", "em_samples")
