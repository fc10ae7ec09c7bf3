"""Image datasets (MNIST family) and batching: IDX reader, embedded ``mnist-5k``, TFDS, batches.

Re-exported by :mod:`dlx_jax.data`; import from there.

* :func:`load_dataset` — ``"mnist-5k"`` (embedded, the default), ``"mnist"``, ``"fashion-mnist"``.
* :func:`read_idx` / :func:`load_idx_dir` — the standard IDX files (gzip or raw), fully validated.
* :func:`to_float_images` — uint8 ``(n, h, w)`` → float32 NHWC ``(n, h, w, 1)`` in ``[0, 1]``.
* :func:`batch_indices` — a shuffled ``(num_batches, batch_size)`` index table for ``lax.scan`` epochs.
* :func:`iterate_batches` — numpy mini-batches (last partial batch kept) for Python loops.

Where the full datasets come from (no download ever happens implicitly):

1. ``data_dir``: a folder with the four standard IDX files, e.g. ``/usr/share/datasets/fashion-mnist``
   from Debian's ``dataset-fashion-mnist`` package.
2. Without ``data_dir``: the Debian folder above when it exists (fashion-mnist only), then
   ``tensorflow_datasets.data_source`` when TFDS is importable (prepared data under ``~/tensorflow_datasets``,
   or fetched when ``download=True``).
"""

from __future__ import annotations

import functools
import gzip
import math
import struct
import zlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

__all__ = [
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "IDX_FILES",
    "ImageDataset",
    "batch_indices",
    "iterate_batches",
    "load_dataset",
    "load_idx_dir",
    "read_idx",
    "to_float_images",
]

DATASET_NAMES = ("mnist-5k", "mnist", "fashion-mnist")
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# The four standard files, by role; each may end in ``.gz`` and use ``.`` instead of ``-`` before idx.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_TFDS_NAMES = {"mnist": "mnist", "fashion-mnist": "fashion_mnist"}
_MAGIC_IMAGES = 2051  # 0x00000803: unsigned byte, rank 3
_MAGIC_LABELS = 2049  # 0x00000801: unsigned byte, rank 1
_NUM_CLASSES = 10
_MNIST5K_TRAIN_PER_CLASS = 400


class ImageDataset(NamedTuple):
    """A train/test image classification split (numpy arrays, owned by the caller).

    Attributes:
        x_train: uint8 ``(n_train, 28, 28)`` images.
        y_train: int32 ``(n_train,)`` labels in ``[0, num_classes)``.
        x_test: uint8 ``(n_test, 28, 28)``.
        y_test: int32 ``(n_test,)``.
        name: the dataset name (``"mnist-5k"``, ``"mnist"``, ``"fashion-mnist"`` or a folder).
        num_classes: 10.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int


# --------------------------------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic (whatever its extension)."""
    if path.is_dir():
        raise ValueError(
            f"IDX path {str(path)!r} is a directory; pass the IDX file itself (or its folder as --data-dir)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"IDX file {str(path)!r} does not exist; pass the path of an MNIST-format IDX file"
        )
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(
            f"IDX file {str(path)!r} cannot be read ({err.strerror or type(err).__name__}); "
            "check its permissions"
        ) from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"{path}: corrupted or truncated gzip data ({err}); re-download the file or pass the raw IDX file"
        ) from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (images rank 3 or labels rank 1, unsigned bytes), gzip or raw.

    The format: a 4-byte magic ``0x00 0x00 <dtype> <rank>`` (dtype ``0x08`` = uint8), then ``rank``
    big-endian uint32 dimensions, then ``prod(dims)`` bytes in C order. Only the two MNIST kinds are
    accepted: magic 2051 (images, rank 3) and 2049 (labels, rank 1). Gzip is detected by its magic
    bytes ``1f 8b``, not by the file name.

    Args:
        path: the file.

    Returns:
        uint8 ``(n, h, w)`` for an image file, int32 ``(n,)`` for a label file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the path is a folder or unreadable, corrupted gzip, unknown magic / dtype / rank,
            a zero dimension, a payload shorter (truncated) or longer (trailing bytes) than
            ``prod(dims)``, or a label outside ``0..9`` (this reader serves 10-class datasets).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header; the file is truncated")
    zero, dtype_code, rank = struct.unpack(">HBB", data[:4])
    magic = struct.unpack(">I", data[:4])[0]
    if zero != 0 or magic not in (_MAGIC_IMAGES, _MAGIC_LABELS):
        hint = " (dtype byte must be 0x08 = uint8)" if zero == 0 and dtype_code != 0x08 else ""
        raise ValueError(
            f"{path}: bad IDX magic number {magic} (0x{magic:08x}){hint}; expected {_MAGIC_IMAGES} for an "
            f"image file or {_MAGIC_LABELS} for a label file — is this an MNIST-format IDX file?"
        )
    header = 4 + 4 * rank
    if len(data) < header:
        raise ValueError(
            f"{path}: header needs {header} bytes but the file holds {len(data)}; it is truncated"
        )
    dims = struct.unpack(f">{rank}I", data[4:header])
    if any(d == 0 for d in dims):
        raise ValueError(f"{path}: a dimension is zero in {dims}; the file holds no data")
    expected = math.prod(dims)  # exact: three uint32 dimensions can overflow int64
    payload = len(data) - header
    if payload != expected:
        what = "truncated" if payload < expected else "followed by trailing bytes"
        raise ValueError(
            f"{path}: dimensions {dims} need {expected} data bytes but the file holds {payload}: "
            f"it is {what}; re-download it"
        )
    array = np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)
    if magic == _MAGIC_LABELS:
        if array.max() >= _NUM_CLASSES:
            bad = int(np.argmax(array >= _NUM_CLASSES))
            raise ValueError(
                f"{path}: label {int(array[bad])} at index {bad} is outside 0..{_NUM_CLASSES - 1}; "
                "the file is corrupted or not an MNIST-style label file"
            )
        return array.astype(np.int32)
    return array.copy()


def _find_idx(folder: Path, stem: str) -> Path | None:
    alt = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, alt + ".gz", alt):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx_dir(data_dir: str | Path, *, name: str | None = None) -> ImageDataset:
    """Load a folder holding the four standard IDX files (``train-images-idx3-ubyte[.gz]``, ...).

    Also accepts the ``train-images.idx3-ubyte`` spelling. Debian's ``dataset-fashion-mnist`` package
    installs such a folder at ``/usr/share/datasets/fashion-mnist``.

    Args:
        data_dir: the folder.
        name: (static) name recorded in the result; the folder path when ``None``.

    Returns:
        An :class:`ImageDataset` of uint8 ``(n, 28, 28)`` images and int32 labels.

    Raises:
        FileNotFoundError: the folder or one of the four files is missing.
        ValueError: ``data_dir`` is a file, a file is invalid (see :func:`read_idx`), image and label
            counts disagree, images are not 28×28, or an image file sits where a label file belongs
            (or vice versa).
    """
    folder = Path(data_dir)
    if folder.is_file():
        raise ValueError(
            f"--data-dir {str(folder)!r} is a file, not a folder; pass the folder that holds the four IDX "
            f"files ({', '.join(s + '.gz' for s in IDX_FILES.values())})"
        )
    if not folder.is_dir():
        raise FileNotFoundError(
            f"--data-dir {str(folder)!r} does not exist (it is not a folder); pass a folder with the four "
            "IDX files "
            f"({', '.join(s + '.gz' for s in IDX_FILES.values())})"
        )
    paths = {role: _find_idx(folder, stem) for role, stem in IDX_FILES.items()}
    missing = [IDX_FILES[role] + "[.gz]" for role, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}; a data folder needs the four standard IDX files "
            f"({', '.join(s + '.gz' for s in IDX_FILES.values())})"
        )
    arrays = {role: read_idx(p) for role, p in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        px, py = paths[f"x_{split}"], paths[f"y_{split}"]
        if x.ndim != 3:
            raise ValueError(f"{px}: expected an image file (magic {_MAGIC_IMAGES}) but found a label file")
        if y.ndim != 1:
            raise ValueError(f"{py}: expected a label file (magic {_MAGIC_LABELS}) but found an image file")
        if x.shape[1:] != (28, 28):
            raise ValueError(f"{px}: images are {x.shape[1]}×{x.shape[2]}, expected 28×28 (MNIST format)")
        if len(x) != len(y):
            raise ValueError(
                f"{px.name} holds {len(x)} images but {py.name} holds {len(y)} labels; the counts must agree "
                "— the files are from different datasets or one is incomplete"
            )
    return ImageDataset(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        name=name or str(folder),
        num_classes=_NUM_CLASSES,
    )


# --------------------------------------------------------------------------------------- datasets


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    folder = Path(str(resources.files("dlx_jax") / "_datasets"))
    x = read_idx(folder / "mnist5k-images-idx3-ubyte.gz")
    y = read_idx(folder / "mnist5k-labels-idx1-ubyte.gz")
    if len(x) != len(y):  # the vendored files are checked by tests; guard against a bad edit
        raise ValueError(f"embedded mnist-5k: {len(x)} images but {len(y)} labels; reinstall dlx-jax")
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _load_mnist5k() -> ImageDataset:
    """The embedded 5,000 digits; per digit the first 400 (file order) train, the last 100 test."""
    x, y = _mnist5k_arrays()
    train, test = [], []
    for c in range(_NUM_CLASSES):
        idx = np.flatnonzero(y == c)
        train.append(idx[:_MNIST5K_TRAIN_PER_CLASS])
        test.append(idx[_MNIST5K_TRAIN_PER_CLASS:])
    tr, te = np.concatenate(train), np.concatenate(test)
    return ImageDataset(x[tr], y[tr], x[te], y[te], name="mnist-5k", num_classes=_NUM_CLASSES)


def _missing_message(name: str, reason: str) -> str:
    apt = (
        "  * Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (then it is found automatically, or pass "
        f"--data-dir {DEBIAN_FASHION_MNIST_DIR})\n"
        if name == "fashion-mnist"
        else ""
    )
    return (
        f"dataset {name!r} is not available here ({reason}). Get it one of these ways:\n"
        f"{apt}"
        "  * a folder with the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz): pass --data-dir DIR\n"
        f"  * TensorFlow Datasets: `pip install 'dlx-jax[tfds]'`, then on a machine with network run "
        '`python -c "import tensorflow_datasets as tfds; '
        f"tfds.data_source('{_TFDS_NAMES[name]}', download=True)\"`\n"
        "  * or use the embedded dataset: --dataset mnist-5k"
    )


def _load_tfds(name: str, *, download: bool) -> ImageDataset:
    try:
        import tensorflow_datasets as tfds  # lazy: optional, slow to import
    except ImportError:
        raise FileNotFoundError(
            _missing_message(name, "no --data-dir given and tensorflow_datasets is not installed")
        ) from None
    try:
        sources = tfds.data_source(_TFDS_NAMES[name], split=["train", "test"], download=download)
    except Exception as err:  # TFDS raises many types (DatasetNotFoundError, AssertionError, IO errors)
        raise FileNotFoundError(
            _missing_message(name, f"TFDS could not provide it: {type(err).__name__}")
        ) from err
    arrays = []
    for source in sources:
        examples = [source[i] for i in range(len(source))]
        if not examples:
            raise ValueError(f"TFDS {_TFDS_NAMES[name]!r} returned an empty split; re-prepare the dataset")
        images = np.stack([np.asarray(ex["image"]) for ex in examples])
        images = images.reshape(images.shape[0], *images.shape[1:3]) if images.ndim == 4 else images
        labels = np.asarray([int(ex["label"]) for ex in examples], dtype=np.int32)
        if images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise ValueError(
                f"TFDS {_TFDS_NAMES[name]!r} gave {images.dtype} images of shape {images.shape[1:]}; "
                "expected uint8 28×28"
            )
        arrays += [images, labels]
    return ImageDataset(*arrays, name=name, num_classes=_NUM_CLASSES)


def load_dataset(
    name: str = "mnist-5k", *, data_dir: str | Path | None = None, download: bool = False
) -> ImageDataset:
    """Load an image classification dataset as uint8 images and int32 labels.

    Args:
        name: ``"mnist-5k"`` (5,000 real digits embedded in the package: per digit the first 400
            train, the last 100 test → 4,000 / 1,000), ``"mnist"`` or ``"fashion-mnist"``
            (60,000 / 10,000).
        data_dir: a folder with the four IDX files (``mnist`` / ``fashion-mnist`` only). When
            ``None``: Debian's ``/usr/share/datasets/fashion-mnist`` (fashion-mnist), then TFDS.
        download: let TFDS download and prepare the data (needs network); off by default so a
            missing dataset fails fast with instructions.

    Returns:
        An :class:`ImageDataset` with freshly allocated arrays (the caller may modify them).

    Raises:
        ValueError: unknown ``name``, ``data_dir`` given for ``mnist-5k``, or invalid files.
        FileNotFoundError: the dataset is not available; the message says how to get it.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name == "mnist-5k":
        if data_dir is not None:
            raise ValueError("mnist-5k is embedded and takes no --data-dir; drop it or use --dataset mnist")
        return _load_mnist5k()
    if data_dir is not None:
        return load_idx_dir(data_dir, name=name)
    if name == "fashion-mnist" and DEBIAN_FASHION_MNIST_DIR.is_dir():
        return load_idx_dir(DEBIAN_FASHION_MNIST_DIR, name=name)
    return _load_tfds(name, download=download)


# --------------------------------------------------------------------------------------- arrays


def to_float_images(x: np.ndarray | Array) -> Float[Array, "n h w c"]:
    """uint8 pixels to float32 NHWC in ``[0, 1]``: ``x / 255`` with a channel axis added.

    Numpy in → numpy out; a JAX array (or tracer) in → JAX array out.

    Args:
        x: uint8 ``(n, h, w)`` (a channel axis of 1 is added) or ``(n, h, w, c)``.

    Returns:
        float32 ``(n, h, w, c)``.

    Raises:
        ValueError: ``x`` is not uint8 or not rank 3/4.
    """
    if x.dtype != np.uint8:
        raise ValueError(
            f"to_float_images expects uint8 pixels 0..255 but got {x.dtype}; pass the raw dataset arrays "
            "(already-float images need no conversion)"
        )
    if x.ndim not in (3, 4):
        raise ValueError(
            f"to_float_images expects (n, h, w) or (n, h, w, c) images, got shape {tuple(x.shape)}"
        )
    xp = jnp if isinstance(x, jax.Array) else np
    y = xp.asarray(x, dtype=xp.float32) / xp.float32(255.0)
    return y[..., None] if x.ndim == 3 else y


def batch_indices(
    key: PRNGKeyArray | None, n: int, *, batch_size: int, shuffle: bool = True, drop_remainder: bool = True
) -> Int[Array, "b batch"]:
    """One epoch's mini-batch index table, shape ``(num_batches, batch_size)``, for ``lax.scan``.

    With ``shuffle`` the order is ``jax.random.permutation(key, n)`` (pass a fresh key per epoch,
    e.g. ``jax.random.fold_in(key, epoch)``); otherwise ``0..n-1``. ``drop_remainder=True`` gives
    ``n // batch_size`` batches and skips the last ``n % batch_size`` examples of the order;
    ``drop_remainder=False`` gives ``ceil(n / batch_size)`` batches and fills the last one by wrapping
    around to the start of the order (those few examples appear twice in the epoch).

    Args:
        key: PRNG key; may be ``None`` when ``shuffle=False``.
        n: (static) number of examples.
        batch_size: (static) examples per batch.
        shuffle: (static) permute the examples.
        drop_remainder: (static) drop (True) or wrap-fill (False) the last partial batch.

    Returns:
        int32 ``(num_batches, batch_size)``.

    Raises:
        ValueError: ``n`` or ``batch_size`` < 1, ``batch_size > n`` with ``drop_remainder`` (no batch
            would remain), or ``shuffle`` without a key.
    """
    if int(n) < 1 or int(batch_size) < 1:
        raise ValueError(
            f"batch_indices needs n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}"
        )
    if drop_remainder and batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} exceeds n={n}, so drop_remainder=True leaves no batch; use a batch "
            f"size <= {n} or drop_remainder=False"
        )
    if shuffle and key is None:
        raise ValueError("batch_indices(shuffle=True) needs a PRNG key; pass one or set shuffle=False")
    order = jax.random.permutation(key, n).astype(jnp.int32) if shuffle else jnp.arange(n, dtype=jnp.int32)
    num_batches = n // batch_size if drop_remainder else -(-n // batch_size)
    total = num_batches * batch_size
    if total > n:
        order = jnp.concatenate([order, jnp.tile(order, -(-(total - n) // n))[: total - n]])
    return order[:total].reshape(num_batches, batch_size)


def iterate_batches(
    key: PRNGKeyArray | None, x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Mini-batches ``(x[idx], y[idx])`` over one epoch; the last partial batch is kept.

    Validation happens at the call, before the first batch is produced.

    Args:
        key: PRNG key for the epoch's permutation; may be ``None`` when ``shuffle=False``.
        x: ``(n, ...)`` inputs (numpy).
        y: ``(n, ...)`` targets (numpy).
        batch_size: examples per batch (the last batch may be smaller).
        shuffle: permute the examples with ``jax.random.permutation(key, n)``.

    Returns:
        An iterator of ``ceil(n / batch_size)`` ``(x_batch, y_batch)`` numpy pairs.

    Raises:
        ValueError: ``x`` and ``y`` lengths differ, are empty, ``batch_size`` < 1, or no key
            with ``shuffle``.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)}; pass matching arrays")
    if n == 0 or batch_size < 1:
        raise ValueError(
            f"iterate_batches needs n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}"
        )
    if shuffle and key is None:
        raise ValueError("iterate_batches(shuffle=True) needs a PRNG key; pass one or set shuffle=False")
    order = np.asarray(jax.random.permutation(key, n)) if shuffle else np.arange(n)

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    return gen()
