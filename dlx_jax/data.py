"""Dataset loading: the vendored classic data sets and user-supplied number files.

This is the one module of ``dlx_jax`` that does I/O. Every loader validates what it reads
and raises one ``ValueError`` (or ``FileNotFoundError``) that names the problem and the fix.

Vendored data (see ``dlx_jax/_datasets/PROVENANCE.md``):

* :func:`load_old_faithful` — Old Faithful, 272 × 2 (eruption minutes, waiting minutes).
* :func:`load_galton_heights` — 481 sons' heights from Galton's family data, in cm.
* :func:`load_galton_father_son` — the matching (father, son) pairs, 481 × 2, in cm.
* :func:`load_book_heights`, :func:`load_book_height_weight`, :func:`load_flower` — the book's own
  ``height.txt`` (25,000 heights in cm), ``height_weight.txt`` (25,000 × 2: cm, kg) and ``flower.png``
  (64 × 64 RGB), vendored from its MIT-licensed repository (steps 2, 3 and 9 use them by default).

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
import io
import math
import os
import re
import stat
from array import array
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import BinaryIO

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
    "load_book_height_weight",
    "load_book_heights",
    "load_flower",
    "load_galton_father_son",
    "load_galton_heights",
    "load_old_faithful",
    "load_table",
]

DATASETS_DIR = Path(str(resources.files("dlx_jax") / "_datasets"))
INCH_TO_CM = 2.54

_SPLIT = re.compile(r"[\s,;]+")
_TIGHT_COMMA = re.compile(r"(?<=\d),(?=\d)")  # a comma between two digits: 170,5 or 1,000
_OTHER_SEPARATOR = re.compile(r"[\s;]+")
_COMMA_PAIR = re.compile(r"[+-]?\d+,\d+")
MAX_NUMBERS = 500_000_000  # 4 GB as float64: far beyond any fit here; more is an error, not an OOM
MAX_LINE_CHARS = 1 << 24  # 16 Mi characters on one line: not a table of a few columns
_LOOKS_NUMERIC = re.compile(r"[+-]?\.?\d")  # a field starting like a number (17O, 1,5) is no column name


def _number(field: str) -> float | None:
    """The field as a float, or ``None`` when it is not a number (quotes around it are allowed)."""
    try:
        return float(field.strip("\"'"))
    except ValueError:
        return None


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for binary reading, after checking that it is a regular file.

    A FIFO, a device (``/dev/zero``) or a socket is refused before it is read, and the file is
    opened with ``O_NONBLOCK`` and checked again, so a FIFO never blocks (even one swapped in
    between the two checks).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(
            f"--data file {str(path)!r} does not exist; pass a path to a text file of numbers"
        ) from None
    except (OSError, ValueError) as err:  # e.g. a name too long, a folder that may not be searched
        raise _unreadable(path, err) from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"--data {str(path)!r} is a directory; pass a file of numbers (e.g. height.txt)")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise _unreadable(path, err) from None
    if not (stat.S_ISREG(mode) and stat.S_ISREG(os.fstat(fd).st_mode)):
        os.close(fd)
        raise ValueError(
            f"--data {str(path)!r} is not a regular file (a FIFO, device or socket); pass a text file of "
            "numbers (save piped data to a file first)"
        )
    return os.fdopen(fd, "rb")


def _unreadable(path: Path, err: Exception) -> ValueError:
    why = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return ValueError(
        f"--data file {str(path)!r} cannot be read ({why}); check its permissions or pass another file"
    )


def _text_lines(path: Path, raw: BinaryIO) -> Iterator[str]:
    """The lines of an open file, decoded as UTF-8 (a byte-order mark dropped), one at a time.

    Exactly the lines of ``text.splitlines()`` on the whole decoded text, without holding it:
    ValueError for binary, gzip or UTF-16 files (sniffed from the first 64 KiB) and for a line
    longer than :data:`MAX_LINE_CHARS`.
    """
    try:
        head = raw.read(65536)
    except OSError as err:
        raise _unreadable(path, err) from None
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError(f"{path} is UTF-16 text; save it as UTF-8 (or plain ASCII) text and pass it again")
    if head[:2] == b"\x1f\x8b":
        raise ValueError(f"{path} is gzip-compressed; decompress it (gunzip) and pass the text file")
    if b"\x00" in head:
        raise ValueError(f"{path} is a binary file (it holds NUL bytes); pass a text file of numbers")
    raw.seek(0)
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace")  # \r\n and \r become \n
    lineno = 0
    while line := text.readline(MAX_LINE_CHARS):
        if len(line) == MAX_LINE_CHARS and not line.endswith("\n") and text.read(1):
            raise ValueError(
                f"{path}:{lineno + 1}: a line longer than {MAX_LINE_CHARS:,} characters; a row holds a few "
                "numbers: pass a text file with one sample per line"
            )
        pieces = line.splitlines()  # the rarer line breaks that splitlines knows (\f, \x1c, \u2028, ...)
        lineno += len(pieces)
        yield from pieces


def _header_or_error(path: Path, lineno: int, text: str, fields: list[str]) -> None:
    """The first line holds non-numbers: return if it is a header (all names), else raise."""
    values = [_number(f) for f in fields]
    bad = [f for f, v in zip(fields, values, strict=True) if v is None]
    mistyped = [f for f in bad if _LOOKS_NUMERIC.match(f.strip("\"'"))]
    if len(bad) == len(fields) and not mistyped:
        return
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


def _parse_row(path: Path, lineno: int, text: str, fields: list[str]) -> list[float]:
    """The numbers of a data line; ValueError naming the line for text, NaN, ±inf or overflow."""
    values = [_number(f) for f in fields]
    bad = [f for f, v in zip(fields, values, strict=True) if v is None]
    if bad:
        raise ValueError(
            f"{path}:{lineno}: non-numeric value {bad[0]!r} in {text[:60]!r}; the file must hold only "
            "numbers separated by whitespace or commas (and at most one header line, the first)"
        )
    for field, value in zip(fields, values, strict=True):
        if not math.isfinite(value):
            if any(c.isdigit() for c in field):  # e.g. 1e400: a number float64 cannot hold
                raise ValueError(
                    f"{path}:{lineno}: {field!r} is beyond float64's range (about ±1.8e308); rescale the data"
                )
            raise ValueError(
                f"{path}:{lineno}: NaN or infinite value {field!r} in {text[:60]!r}; remove or impute it"
            )
    return values


def _check_decimal_comma(path: Path, lineno: int, text: str) -> None:
    """Reject a data line whose commas all sit inside fields split by spaces, tabs or ``;``.

    ``170,5 65,2`` or ``1,5;2,5`` (decimal commas) and ``1,000 2,000`` (thousands separators)
    would otherwise be read as twice as many columns of wrong numbers.
    """
    commas = text.count(",")
    if commas and commas == len(_TIGHT_COMMA.findall(text)) and _OTHER_SEPARATOR.search(text):
        field = next(f for f in _OTHER_SEPARATOR.split(text) if "," in f)
        raise ValueError(
            f"{path}:{lineno}: {field!r} has a comma inside a field of {text[:60]!r} (whose fields are "
            "split by spaces, tabs or ';'): decimal commas are not supported: write 170.5, not 170,5 "
            "(and 1000, not 1,000)"
        )


def _read_rows(path: Path, lines: Iterator[str]) -> tuple[array, int, bool]:
    """All numbers of the file row by row into one flat float64 buffer.

    Returns ``(numbers, width, pairs_only)``: ``width`` columns (0 for no rows), and whether
    every row was a single ``digits,digits`` field (``170,5``: maybe a decimal comma).
    """
    numbers, width, pairs_only, header_seen = array("d"), 0, True, False
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = [f for f in _SPLIT.split(text) if f]
        if not fields:
            continue
        if not width and not header_seen and any(_number(f) is None for f in fields):
            _header_or_error(path, lineno, text, fields)  # the first line: a header only if all names
            header_seen = True
            continue
        values = _parse_row(path, lineno, text, fields)
        _check_decimal_comma(path, lineno, text)
        pair = "," in text and _COMMA_PAIR.fullmatch(text) is not None
        if width and len(values) != width:
            decimal = (pairs_only and width == 2) or pair  # 170,5 then 171 (or 171 then 170,5)
            hint = "; if the commas are decimal commas, write 170.5, not 170,5" if decimal else ""
            raise ValueError(
                f"{path}:{lineno}: ragged row with {len(values)} columns where earlier rows have "
                f"{width}; every row needs the same number of columns{hint}"
            )
        width, pairs_only = len(values), pairs_only and pair
        if len(numbers) + width > MAX_NUMBERS:
            raise ValueError(
                f"{path} holds more than {MAX_NUMBERS:,} numbers ({8 * MAX_NUMBERS / 1e9:.1f} GB as "
                "float64); pass a subsample (e.g. every 10th line): a fit of a few parameters needs far fewer"
            )
        numbers.extend(values)
    return numbers, width, pairs_only


def load_table(path: str | Path, *, ncols: int | None = None) -> np.ndarray:
    """Read a file of numbers: one row per line, columns split by whitespace, commas or ``;``.

    Blank lines and lines starting with ``#`` are skipped. The first line may be a header, e.g.
    ``"eruptions","waiting"``, but only when *every* field on it is a name (text that does not
    start like a number): a first line that mixes numbers and text (``x 12``) or holds a mistyped
    number (``17O`` typed for ``170``) is an error naming the line, never silently dropped. A UTF-8
    byte-order mark is ignored. The book's own ``height.txt`` and ``old_faithful.txt`` load unchanged.

    The file is read line by line into one float64 buffer: peak memory is about the size of the
    result (8 bytes a number), not a multiple of the file's text. At most :data:`MAX_NUMBERS`
    numbers are read.

    Decimal commas are not supported, and detected where they can be told apart from a comma
    between columns: a line whose every comma sits between two digits inside fields that spaces,
    tabs or ``;`` separate (``170,5 65,2``, ``1,5;2,5``; also ``1,000 2,000``) is an error, and so
    is a file of ``170,5``-like lines when one column is asked for (``ncols=1``). A file of such
    lines read for two columns is *not* rejected: ``170,5`` is a valid row of a two-column CSV of
    integers (``170,65``), so it loads as two columns.

    Args:
        path: the file to read.
        ncols: (static) the number of columns required, or ``None`` for any.

    Returns:
        A float64 array of shape ``(n,)`` for one column, else ``(n, d)``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the path is a folder, a FIFO or a device (not a regular file); the file is
            unreadable, binary, gzip or UTF-16, empty, ragged (rows of different lengths), holds a
            non-numeric value outside the header, a NaN, an infinity, a number beyond float64,
            decimal commas, a line over :data:`MAX_LINE_CHARS` characters or more than
            :data:`MAX_NUMBERS` numbers, or has the wrong number of columns.
    """
    path = Path(path)
    with _open_regular(path) as raw:
        numbers, width, pairs_only = _read_rows(path, _text_lines(path, raw))
    if not width:
        raise ValueError(f"{path} holds no numbers; pass a file with one sample per line")
    if ncols is not None and width != ncols:
        if ncols == 1 and width == 2 and pairs_only:
            raise ValueError(
                f"{path} holds lines like 170,5 (two numbers split by a comma) but this step needs one "
                "column: decimal commas are not supported: write 170.5, not 170,5"
            )
        raise ValueError(
            f"{path} has {width} columns but this step needs {ncols}; pass a {ncols}-column file"
        )
    data = np.frombuffer(numbers, dtype=np.float64).reshape(-1, width)
    return data[:, 0] if width == 1 else data


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


def load_book_heights() -> np.ndarray:
    """The book's ``step02/height.txt``: 25,000 heights in cm, float64 of shape ``(25000,)``."""
    return load_table(DATASETS_DIR / "height.txt", ncols=1)


def load_book_height_weight() -> np.ndarray:
    """The book's ``step03/height_weight.txt``: (height cm, weight kg), float64 ``(25000, 2)``."""
    return load_table(DATASETS_DIR / "height_weight.txt", ncols=2)


def load_flower() -> np.ndarray:
    """The book's ``step09/flower.png`` as float32 ``(64, 64, 3)`` RGB in [0, 1].

    The same values as the book's ``plt.imread`` (8-bit channels divided by 255).
    """
    from PIL import Image  # pillow: a dependency of matplotlib

    with Image.open(DATASETS_DIR / "flower.png") as img:
        return np.asarray(img.convert("RGB"), np.float32) / np.float32(255.0)
