# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Step 9 — the diffusion model
#
# The book's `step09`: `gaussian_noise.py` (noising `flower.png` one step at a time, and by the closed
# form), `simple_unet.py` and `diffusion_model.py` (DDPM on MNIST). Quick mode.

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
from experiments import _book, _notebook, step09_diffusion

cfg = _notebook.config(step09_diffusion)
metrics = step09_diffusion.main(cfg)

# %% [markdown]
# `gaussian_noise.py`: x_t every 100 steps, step by step (top) and from q(x_t | x_0) (bottom). Both
# are the same distribution: the standardized pixels have mean ≈ 0 and standard deviation ≈ 1.

# %%
_notebook.show(cfg, "book_noising")
print(
    "image shape:",
    metrics["noising_photo_shape"],
    "(the book prints",
    _book.PRINTED["step09_flower_shape"],
    ")",
)
for t, m, s in zip(
    metrics["noising_t"], metrics["noising_stepwise_z_mean"], metrics["noising_stepwise_z_std"], strict=True
):
    print(f"t = {t:>4}: standardized step-by-step pixels: mean {m:+.4f}, std {s:.4f}")

# %%
_notebook.compare([("final training loss", _book.PRINTED["step09_final_loss"], metrics["final_loss"])])
here = metrics.get("pretrained_note", "quick mode")  # the shipped weights' run, or quick mode's own
print(f"(the book: 10 epochs of 60,000 digits at width 64; here: {here})")

# %%
_notebook.show(cfg, "forward_noising", "samples", "denoising_trajectory", "loss_curve")
