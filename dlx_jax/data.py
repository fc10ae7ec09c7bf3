"""Dataset loading: the vendored classic data sets and user-supplied number files.

This is the one module of ``dlx_jax`` that does I/O. Every loader validates what it reads
and raises one ``ValueError`` (or ``FileNotFoundError``) that names the problem and the fix.

Vendored data (see ``dlx_jax/_datasets/PROVENANCE.md``):

* :func:`load_old_faithful` — Old Faithful, 272 × 2 (eruption minutes, waiting minutes).
* :func:`load_galton_heights` — 481 sons' heights from Galton's family data, in cm.
* :func:`load_galton_father_son` — the matching (father, son) pairs, 481 × 2, in cm.

User files: :func:`load_table` reads a whitespace- or comma-separated file of numbers (a header line
only when it is all text); :func:`check_sample` checks a sample's magnitude and spread before
statistics are computed on it.

Image datasets and batching live in :mod:`dlx_jax.image_data` and are re-exported here:
:func:`load_dataset` (``"mnist-5k"`` embedded, ``"mnist"``, ``"fashion-mnist"``), :class:`ImageDataset`,
:func:`read_idx`, :func:`load_idx_dir`, :func:`to_float_images`, :func:`batch_indices`,
:func:`iterate_batches`.
"""

from __future__ import annotations

import csv
import math
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
    "check_sample",
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
_LOOKS_NUMERIC = re.compile(r"[+-]?\.?\d")  # a field starting like a number (17O, 1,5) is no column name


def _number(field: str) -> float | None:
    """The field as a float, or ``None`` when it is not a number (quotes around it are allowed)."""
    try:
        return float(field.strip("\"'"))
    except ValueError:
        return None


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, a byte-order mark dropped); ValueError for binary or UTF-16 files."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(
            f"--data file {str(path)!r} cannot be read ({err.strerror or type(err).__name__}); "
            "check its permissions or pass another file"
        ) from None
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError(f"{path} is UTF-16 text; save it as UTF-8 (or plain ASCII) text and pass it again")
    if raw[:2] == b"\x1f\x8b":
        raise ValueError(f"{path} is gzip-compressed; decompress it (gunzip) and pass the text file")
    if b"\x00" in raw[:65536]:
        raise ValueError(f"{path} is a binary file (it holds NUL bytes); pass a text file of numbers")
    return raw.decode("utf-8-sig", errors="replace")


def load_table(path: str | Path, *, ncols: int | None = None) -> np.ndarray:
    """Read a file of numbers: one row per line, columns split by whitespace or commas.

    Blank lines and lines starting with ``#`` are skipped. The first line may be a header, e.g.
    ``"eruptions","waiting"``, but only when *every* field on it is a name (text that does not
    start like a number): a first line that mixes numbers and text (``x 12``) or holds a mistyped
    number (``17O`` typed for ``170``) is an error naming the line, never silently dropped. A UTF-8
    byte-order mark is ignored. The book's own ``height.txt`` and ``old_faithful.txt`` load unchanged.

    Args:
        path: the file to read.
        ncols: (static) the number of columns required, or ``None`` for any.

    Returns:
        A float64 array of shape ``(n,)`` for one column, else ``(n, d)``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the path is a folder, the file is unreadable, binary, gzip or UTF-16, empty,
            ragged (rows of different lengths), holds a non-numeric value outside the header, a
            NaN, an infinity or a number beyond float64, or has the wrong number of columns.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--data {str(path)!r} is a directory; pass a file of numbers (e.g. height.txt)")
    if not path.is_file():
        raise FileNotFoundError(
            f"--data file {str(path)!r} does not exist; pass a path to a text file of numbers"
        )
    rows: list[list[float]] = []
    header_seen = False
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = [f for f in _SPLIT.split(text) if f]
        if not fields:
            continue
        values = [_number(f) for f in fields]
        bad = [f for f, v in zip(fields, values, strict=True) if v is None]
        if bad and not rows and not header_seen:  # the first line: a header only if it is all names
            mistyped = [f for f in bad if _LOOKS_NUMERIC.match(f.strip("\"'"))]
            if len(bad) == len(fields) and not mistyped:
                header_seen = True
                continue
            why = (
                "starts like a number but is not one (a mistyped value?)"
                if mistyped
                else "is not a number, and the line also holds numbers"
            )
            raise ValueError(
                f"{path}:{lineno}: {(mistyped or bad)[0]!r} {why}, so the line is neither data nor a header "
                f"(a header holds only column names): {text[:60]!r}; fix the value, or comment the line "
                "out with '#'"
            )
        if bad:
            raise ValueError(
                f"{path}:{lineno}: non-numeric value {bad[0]!r} in {text[:60]!r}; the file must hold only "
                "numbers separated by whitespace or commas (and at most one header line, the first)"
            )
        for field, value in zip(fields, values, strict=True):
            if not math.isfinite(value):
                if any(c.isdigit() for c in field):  # e.g. 1e400: a number float64 cannot hold
                    raise ValueError(
                        f"{path}:{lineno}: {field!r} is beyond float64's range (about ±1.8e308); "
                        "rescale the data"
                    )
                raise ValueError(
                    f"{path}:{lineno}: NaN or infinite value {field!r} in {text[:60]!r}; remove or impute it"
                )
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


def check_sample(x: np.ndarray, *, source: str, dtype: type = np.float64, spread: bool = True) -> np.ndarray:
    """Check that a sample ``(n,)`` or ``(n, d)`` suits statistics computed in ``dtype``.

    Two problems are caught before any computation, each with the fix:

    * magnitude: squared deviations of ``n`` values must stay finite in ``dtype`` — the largest
      allowed ``|x|`` is ``sqrt(finfo(dtype).max / (4 n))`` (about 1e153 for a few float64 values);
      larger values would turn means, variances and likelihoods into inf or NaN ("rescale the data");
    * spread (``spread=True``): every column must vary — constant data has zero variance, so no
      normal or covariance can be fitted to it.

    Args:
        x: the sample (float64, as :func:`load_table` returns it).
        source: how to name the data in messages (e.g. the ``--data`` path).
        dtype: the floating type of the step's arithmetic.
        spread: require a positive variance in every column.

    Returns:
        ``x`` unchanged.

    Raises:
        ValueError: values too large for ``dtype``, or (``spread``) a column with zero variance.
    """
    x = np.asarray(x, dtype=np.float64)
    n = max(int(x.shape[0]), 1)
    columns = x.reshape(n, -1)
    limit = math.sqrt(float(np.finfo(dtype).max) / (4 * n))
    biggest = float(np.max(np.abs(columns))) if columns.size else 0.0
    if not biggest <= limit:
        raise ValueError(
            f"{source}: values up to {biggest:.3g} in magnitude are too large for this step (sums of "
            f"their squares overflow {np.dtype(dtype).name}); rescale the data (e.g. divide by a power "
            f"of 10) so that every |x| < {limit:.2g}"
        )
    if spread:
        for j in range(columns.shape[1]):
            col = columns[:, j]
            what = "the data" if columns.shape[1] == 1 else f"column {j + 1}"
            if np.all(col == col[0]):
                raise ValueError(
                    f"{source}: {what} has zero variance (all {n} values are {col[0]:g}); the fit needs "
                    "values that differ — pass data with at least two different values"
                )
            if not np.mean((col - col.mean()) ** 2) > 0:
                raise ValueError(
                    f"{source}: {what} has a spread too small for {np.dtype(dtype).name} (its variance "
                    "underflows to 0); rescale the data (e.g. multiply by a power of 10)"
                )
    return x


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
