"""Dataset loading: the vendored classic data sets and user-supplied number files.

This is the one module of ``dlx_jax`` that does I/O. Every loader validates what it reads
and raises one ``ValueError`` (or ``FileNotFoundError``) that names the problem and the fix.

Vendored data (see ``dlx_jax/_datasets/PROVENANCE.md``):

* :func:`load_old_faithful` — Old Faithful, 272 × 2 (eruption minutes, waiting minutes).
* :func:`load_galton_heights` — 481 sons' heights from Galton's family data, in cm.
* :func:`load_galton_father_son` — the matching (father, son) pairs, 481 × 2, in cm.

Image datasets and batching live in :mod:`dlx_jax.image_data` and are re-exported here:
:func:`load_dataset` (``"mnist-5k"`` embedded, ``"mnist"``, ``"fashion-mnist"``), :class:`ImageDataset`,
:func:`read_idx`, :func:`load_idx_dir`, :func:`to_float_images`, :func:`batch_indices`,
:func:`iterate_batches`.
"""

from __future__ import annotations

import csv
import re
from importlib import resources
from pathlib import Path

import numpy as np

from dlx_jax.image_data import (
    DATASET_NAMES,
    IDX_FILES,
    ImageDataset,
    batch_indices,
    iterate_batches,
    load_dataset,
    load_idx_dir,
    read_idx,
    to_float_images,
)

__all__ = [
    "DATASETS_DIR",
    "DATASET_NAMES",
    "IDX_FILES",
    "INCH_TO_CM",
    "ImageDataset",
    "batch_indices",
    "iterate_batches",
    "load_dataset",
    "load_idx_dir",
    "read_idx",
    "to_float_images",
    "load_galton_father_son",
    "load_galton_heights",
    "load_old_faithful",
    "load_table",
]

DATASETS_DIR = Path(str(resources.files("dlx_jax") / "_datasets"))
INCH_TO_CM = 2.54

_SPLIT = re.compile(r"[\s,;]+")


def load_table(path: str | Path, *, ncols: int | None = None) -> np.ndarray:
    """Read a file of numbers: one row per line, columns split by whitespace or commas.

    Blank lines and lines starting with ``#`` are skipped; a first line that is not numeric
    is taken as a header (e.g. ``"eruptions","waiting"``). The book's own ``height.txt`` and
    ``old_faithful.txt`` load unchanged.

    Args:
        path: the file to read.
        ncols: (static) the number of columns required, or ``None`` for any.

    Returns:
        A float64 array of shape ``(n,)`` for one column, else ``(n, d)``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, ragged (rows of different lengths), holds a
            non-numeric or non-finite value, or has the wrong number of columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"--data file {str(path)!r} does not exist; pass a path to a text file of numbers"
        )
    rows: list[list[float]] = []
    width = None
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = [f for f in _SPLIT.split(text) if f]
        try:
            values = [float(f.strip("\"'")) for f in fields]
        except ValueError:
            if not rows and width is None:  # a header line
                width = -1
                continue
            raise ValueError(
                f"{path}:{lineno}: non-numeric value in {text[:60]!r}; the file must hold only numbers "
                "separated by whitespace or commas (one optional header line)"
            ) from None
        if not all(np.isfinite(values)):
            raise ValueError(f"{path}:{lineno}: NaN or infinite value in {text[:60]!r}; remove or impute it")
        if rows and len(values) != len(rows[0]):
            raise ValueError(
                f"{path}:{lineno}: ragged row with {len(values)} columns where earlier rows have "
                f"{len(rows[0])}; every row needs the same number of columns"
            )
        rows.append(values)
    if not rows:
        raise ValueError(f"{path} holds no numbers; pass a file with one sample per line")
    data = np.asarray(rows, dtype=np.float64)
    if ncols is not None and data.shape[1] != ncols:
        raise ValueError(
            f"{path} has {data.shape[1]} columns but this step needs {ncols}; pass a {ncols}-column file"
        )
    return data[:, 0] if data.shape[1] == 1 else data


def load_old_faithful() -> np.ndarray:
    """Old Faithful geyser data, float64 of shape ``(272, 2)``: (eruption min, waiting min)."""
    return load_table(DATASETS_DIR / "old_faithful.csv", ncols=2)


def _galton_rows() -> list[dict[str, str]]:
    with open(DATASETS_DIR / "galton_families.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_galton_heights() -> np.ndarray:
    """Heights of Galton's 481 adult sons in centimetres, float64 of shape ``(481,)``."""
    rows = _galton_rows()
    return np.array([float(r["child_height"]) for r in rows if r["gender"] == "male"]) * INCH_TO_CM


def load_galton_father_son() -> np.ndarray:
    """(father, son) heights in centimetres from Galton's family data, float64 ``(481, 2)``."""
    rows = _galton_rows()
    pairs = [(float(r["father"]), float(r["child_height"])) for r in rows if r["gender"] == "male"]
    return np.array(pairs) * INCH_TO_CM
