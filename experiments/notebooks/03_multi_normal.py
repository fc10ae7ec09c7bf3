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
# # Step 3 — the multivariate normal
#
# The book's `step03`: `numpy_basis.py` and `numpy_matrix.py` (arrays, determinant, inverse, the 2-D
# normal's density), `plot_3d.py` (a surface and its contours), `plot_norm.py` (the 2-D normal),
# `plot_dataset.py` and `mle.py` (the fit to `height_weight.txt`, with `np.cov`'s ddof 1).

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
from experiments import _book, _notebook, step03_mvn

cfg = _notebook.config(step03_mvn)
metrics = step03_mvn.main(cfg)

# %%
printed = _book.PRINTED
_notebook.compare(
    [
        ("np.dot(a, b)", printed["step03_dot"], metrics["book_dot"]),
        ("A @ B", printed["step03_matmul"], metrics["book_matmul"]),
        ("det([[3, 4], [5, 6]])", printed["step03_det"], metrics["book_det"]),
        ("inv([[0.5, 1], [2, 3]])", printed["step03_inverse"], metrics["book_inverse"]),
        ("N((0, 0) | (1, 2), I)", printed["step03_mvn_pdf"], metrics["book_mvn_pdf"]),
        ("xs.shape", printed["step03_shape"], (metrics["n"], 2)),
    ]
)

# %% [markdown]
# `plot_3d.py`, then `plot_norm.py`'s μ = (0.5, −0.2), Σ = ((2, 0.3), (0.3, 0.5)).

# %%
_notebook.show(cfg, "book_plot_3d", "mvn_surface_contour")

# %% [markdown]
# `mle.py`: the fit with `np.cov` (ddof 1) as a surface and over the first 500 points; then samples
# drawn from the (ddof 0) maximum-likelihood fit beside the data.

# %%
_notebook.show(cfg, "mle_surface_book", "generated_vs_original")
print("mean:", metrics["mean"])
print("np.cov (ddof 1):", metrics["cov_unbiased"])
