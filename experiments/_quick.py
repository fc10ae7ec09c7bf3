"""What ``--quick`` changes, for every step in one table (a smoke run: small, fast, not a result).

``QUICK[step]`` holds the values a step's quick mode uses. Options named like a config field
(``trials``, ``n_generated``, ``grid_size``, ``epochs``, ``iwae_k``) are caps: quick mode uses
``min(option, cap)`` (:func:`cap`). The others replace a setting outright under ``--quick``:
``grid`` (step 4's density grid, whatever ``--grid``), ``density_grid`` (step 5's contour grid,
120 otherwise), ``contour_grid`` (step 6's Rosenbrock contour grid, 400 otherwise), ``n_train`` /
``n_test`` (the training and test images kept: evenly spaced for the VAEs, a seeded random subset
for the CNN).
"""

from __future__ import annotations

from typing import Any

__all__ = ["QUICK", "cap"]

_VAE_FAMILY = {"n_train": 1000, "n_test": 200, "epochs": 3, "iwae_k": 16}
_DIFFUSION = {
    "n_train": 1000,
    "n_test": 200,
    "epochs": 2,
    "features": 8,
    "num_samples": 20,
    "fid_samples": 20,
    "judge_epochs": 3,
    "bn_recalibration": 5,
    "pretrained_samples": 200,  # samples judged from the shipped weights (--weights auto/pretrained)
}

QUICK: dict[str, dict[str, int]] = {
    "step01_normal": {"trials": 2000},
    "step02_mle": {"n_generated": 2000},
    "step03_mvn": {"grid_size": 40},
    "step04_gmm": {"grid": 30},
    "step05_em": {"density_grid": 60},
    "step06_autodiff": {"contour_grid": 150},  # the book's iteration counts stay: they take milliseconds
    "cnn": {"n_train": 2000, "n_test": 500, "epochs": 3},
    "step07_vae": _VAE_FAMILY,
    "step08_hvae": _VAE_FAMILY,
    # steps 9-10: images kept, epochs, UNet width, samples per guidance scale, FID samples, judge
    # epochs, BatchNorm re-estimation passes (caps, except judge_epochs, which replaces --judge-epochs);
    # pretrained_samples caps --num-samples and --fid-samples when the shipped weights are sampled
    "step09_diffusion": _DIFFUSION,
    "step10_guidance": _DIFFUSION,
}


def cap(config: Any, value: int, limit: int) -> int:
    """``value``, or at most ``limit`` under ``--quick``."""
    return min(value, limit) if config.quick else value
