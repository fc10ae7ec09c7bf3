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
# # Step 6 — automatic differentiation (JAX in place of PyTorch)
#
# The book's `step06`: `tensor.py` (a gradient), `gradient.py` (descent on the Rosenbrock function),
# `regression.py`, `neuralnet.py` and `vision.py` (an image dataset). `jax.grad` does what `backward()` does
# in the book.

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

from experiments import _book, _notebook, step06_autodiff

cfg = _notebook.config(step06_autodiff)
metrics = step06_autodiff.main(cfg)
printed = _book.PRINTED

# %% [markdown]
# The notebook prints (x0, x1) every 1,000 steps. Its loop starts with the gradient it printed before
# the loop still stored, so the first update counts it twice; `book_loop_descent` does the same and
# lands on the book's numbers, plain descent differs early and meets them at the end.

# %%
book = np.array(printed["step06_rosenbrock_every_1000"])
ours = np.array(metrics["rosenbrock_book_loop_every_1000"])
plain = np.array(metrics["rosenbrock_every_1000"])
for i, (b, o, p) in enumerate(zip(book, ours, plain, strict=True)):
    print(f"step {1000 * i:>5}: book {b}  book's loop {o}  plain descent {p}")
print("largest difference to the book:", np.abs(book - ours).max())

# %%
_notebook.compare(
    [
        ("dy/dx of 3x² at 5", printed["step06_grad"], metrics["grad_3x2_at_5"]),
        (
            "Rosenbrock gradient at (0, 2)",
            printed["step06_rosenbrock_grad"],
            metrics["rosenbrock_grad_at_start"],
        ),
        ("regression W (other random data)", printed["step06_linreg_W"], metrics["linreg_W"]),
        ("regression b (other random data)", printed["step06_linreg_b"], metrics["linreg_b"]),
        ("MLP final loss (other random data)", printed["step06_mlp_final_loss"], metrics["mlp_final_loss"]),
        ("vision.py: size (mnist-5k here)", printed["step06_vision_size"], metrics["vision_size"]),
        ("vision.py: first label", printed["step06_vision_first_label"], metrics["vision_first_label"]),
        (
            "vision.py: a batch (NHWC here)",
            printed["step06_vision_batch_shape"],
            metrics["vision_batch_shape"],
        ),
    ]
)

# %%
_notebook.show(cfg, "rosenbrock_path", "linear_regression", "mlp_fit", "vision_first_image")
