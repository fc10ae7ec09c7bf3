"""dlx_jax.data: number files, vendored small data, IDX reader, image datasets, batching."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx_jax import data, image_data
from dlx_jax.data import (
    batch_indices,
    iterate_batches,
    load_dataset,
    load_idx_dir,
    load_table,
    read_idx,
    to_float_images,
)
from tests.helpers import RTOL_JIT_F32

# ------------------------------------------------------------------------------ load_table


def _write(tmp_path: Path, text: str, name: str = "d.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_table_whitespace_and_comma_agree(tmp_path):
    ws = load_table(_write(tmp_path, "1 2\n3\t4\n\n# comment\n5   6\n", "a.txt"))
    cs = load_table(_write(tmp_path, "1,2\n3, 4\n5,6\n", "b.csv"))
    np.testing.assert_array_equal(ws, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(cs, ws)
    assert ws.dtype == np.float64


def test_load_table_header_and_single_column(tmp_path):
    t = load_table(_write(tmp_path, '"eruptions","waiting"\n3.6,79\n1.8,54\n'), ncols=2)
    np.testing.assert_array_equal(t, [[3.6, 79], [1.8, 54]])
    one = load_table(_write(tmp_path, "170.5\n165\n", "h.txt"))
    assert one.shape == (2,)
    np.testing.assert_array_equal(one, [170.5, 165.0])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "holds no numbers"),
        ("# only a comment\n\n", "holds no numbers"),
        ("header\n", "holds no numbers"),
        ("1 2\n3\n", "ragged row"),
        ("1 2\n3 x\n", "non-numeric"),
        ("1 2\nnan 3\n", "NaN or infinite"),
    ],
)
def test_load_table_bad_files(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_table(_write(tmp_path, text))


def test_load_table_wrong_ncols_and_missing(tmp_path):
    with pytest.raises(ValueError, match="has 3 columns but this step needs 2"):
        load_table(_write(tmp_path, "1 2 3\n"), ncols=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_table(tmp_path / "nope.txt")


def test_small_vendored_loaders():
    of = data.load_old_faithful()
    assert of.shape == (272, 2)
    np.testing.assert_array_equal(of[0], [3.6, 79.0])  # first row of R's faithful
    h = data.load_galton_heights()
    fs = data.load_galton_father_son()
    assert h.shape == (481,) and fs.shape == (481, 2)
    np.testing.assert_array_equal(fs[:, 1], h)
    assert 170 < h.mean() < 180  # sons' mean height ~69.2 in = 175.8 cm


# ------------------------------------------------------------------------------ IDX files


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (0x0800 | array.ndim)
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_idx(path: Path, array: np.ndarray, *, gz: bool = True, magic: int | None = None) -> Path:
    raw = _idx_bytes(array, magic)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def _images(n: int, rng: np.random.Generator, h: int = 28, w: int = 28) -> np.ndarray:
    return rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)


def test_read_idx_roundtrip_gz_and_raw_detected_by_magic(tmp_path):
    rng = np.random.default_rng(0)
    x = _images(3, rng, 5, 4)
    y = np.array([0, 9, 4], dtype=np.uint8)
    # gzip content under a raw name and raw content under a .gz name: detection is by content
    gx = read_idx(_write_idx(tmp_path / "img-idx3-ubyte", x, gz=True))
    ry = read_idx(_write_idx(tmp_path / "lab-idx1-ubyte.gz", y, gz=False))
    np.testing.assert_array_equal(gx, x)
    assert gx.dtype == np.uint8 and gx.shape == (3, 5, 4)
    np.testing.assert_array_equal(ry, y)
    assert ry.dtype == np.int32


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b[:10], "header needs 16 bytes"),
        (lambda b: b[:3], "too short"),
        (lambda b: b"\x00\x00\x08\x02" + b[4:], "bad IDX magic number 2050"),
        (lambda b: b"\x00\x00\x0d\x03" + b[4:], "dtype byte must be 0x08"),
        (lambda b: b"\x01\x00\x08\x03" + b[4:], "bad IDX magic"),
        (lambda b: b[:4] + struct.pack(">I", 0) + b[8:], "dimension is zero"),
    ],
)
def test_read_idx_corrupted_images(tmp_path, mutate, match):
    raw = _idx_bytes(_images(2, np.random.default_rng(1)))
    for gz in (False, True):
        p = tmp_path / f"bad{int(gz)}-idx3-ubyte"
        p.write_bytes(gzip.compress(mutate(raw)) if gz else mutate(raw))
        with pytest.raises(ValueError, match=match) as info:
            read_idx(p)
        assert str(p) in str(info.value)  # names the file


def test_read_idx_bad_labels_gzip_and_missing(tmp_path):
    with pytest.raises(ValueError, match="label 12 at index 1 is outside 0..9"):
        read_idx(_write_idx(tmp_path / "l.gz", np.array([3, 12, 1])))
    good = gzip.compress(_idx_bytes(_images(2, np.random.default_rng(2))))
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated gzip"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "junk.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 5)
    with pytest.raises(ValueError, match="corrupted or truncated gzip"):
        read_idx(tmp_path / "junk.gz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_idx(tmp_path / "absent.gz")


def _make_idx_dir(
    folder: Path, *, n_train=6, n_test=4, n_test_labels=None, hw=(28, 28), seed=0, dotted=False, gz=True
) -> dict[str, np.ndarray]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": _images(n_train, rng, *hw),
        "y_train": rng.integers(0, 10, size=n_train).astype(np.uint8),
        "x_test": _images(n_test, rng, *hw),
        "y_test": rng.integers(0, 10, size=n_test_labels or n_test).astype(np.uint8),
    }
    for role, stem in image_data.IDX_FILES.items():
        name = stem.replace("-idx", ".idx") if dotted else stem
        _write_idx(folder / (name + (".gz" if gz else "")), arrays[role], gz=gz)
    return arrays


@pytest.mark.parametrize(("dotted", "gz"), [(False, True), (True, False)])
def test_load_idx_dir_roundtrip(tmp_path, dotted, gz):
    arrays = _make_idx_dir(tmp_path / "d", dotted=dotted, gz=gz)
    ds = load_idx_dir(tmp_path / "d", name="toy")
    for role in image_data.IDX_FILES:
        np.testing.assert_array_equal(getattr(ds, role), arrays[role])
    assert ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.uint8
    assert ds.name == "toy" and ds.num_classes == 10
    via_dataset = load_dataset("mnist", data_dir=tmp_path / "d")
    np.testing.assert_array_equal(via_dataset.x_test, arrays["x_test"])
    assert via_dataset.name == "mnist"


def test_load_idx_dir_bad_folders(tmp_path):
    _make_idx_dir(tmp_path / "count", n_test=4, n_test_labels=5)
    with pytest.raises(ValueError, match="holds 4 images but t10k-labels-idx1-ubyte.gz holds 5 labels"):
        load_idx_dir(tmp_path / "count")
    _make_idx_dir(tmp_path / "dims", hw=(27, 28))
    with pytest.raises(ValueError, match="images are 27×28, expected 28×28"):
        load_idx_dir(tmp_path / "dims")
    _make_idx_dir(tmp_path / "missing")
    (tmp_path / "missing" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="lacks train-labels-idx1-ubyte"):
        load_idx_dir(tmp_path / "missing")
    arrays = _make_idx_dir(tmp_path / "swapped")
    _write_idx(tmp_path / "swapped" / "train-labels-idx1-ubyte.gz", arrays["x_train"])
    with pytest.raises(ValueError, match="expected a label file"):
        load_idx_dir(tmp_path / "swapped")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_idx_dir(tmp_path / "nowhere")
    _make_idx_dir(tmp_path / "trunc")
    p = tmp_path / "trunc" / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-28]))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "trunc")


# ------------------------------------------------------------------------------ datasets


def test_mnist5k_canonical_split():
    ds = load_dataset()  # default name
    assert ds.name == "mnist-5k" and ds.num_classes == 10
    assert ds.x_train.shape == (4000, 28, 28) and ds.x_test.shape == (1000, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(ds.y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
    # independent parse of the vendored file: sorted by class, 500 each
    raw = gzip.decompress((data.DATASETS_DIR / "mnist5k-images-idx3-ubyte.gz").read_bytes())
    assert struct.unpack(">4I", raw[:16]) == (2051, 5000, 28, 28)
    allx = np.frombuffer(raw[16:], np.uint8).reshape(5000, 28, 28)
    for c in (0, 7, 9):
        np.testing.assert_array_equal(ds.x_train[ds.y_train == c], allx[500 * c : 500 * c + 400])
        np.testing.assert_array_equal(ds.x_test[ds.y_test == c], allx[500 * c + 400 : 500 * (c + 1)])
    # pixel statistics of real MNIST digits: mostly background, mean ~33/255
    assert 25 < ds.x_train.mean() < 40


def test_mnist5k_returns_independent_copies():
    a = load_dataset("mnist-5k")
    a.x_train[0] = 255
    a.y_train[0] = 9
    b = load_dataset("mnist-5k")
    assert b.x_train[0].max() < 255 or b.x_train[0].min() < 255
    assert b.y_train[0] == 0


def test_load_dataset_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'; choose one of mnist-5k"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="takes no --data-dir"):
        load_dataset("mnist-5k", data_dir=tmp_path)


@pytest.mark.skipif(
    not image_data.DEBIAN_FASHION_MNIST_DIR.is_dir(),
    reason="Debian's dataset-fashion-mnist package is not installed",
)
def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist")  # found automatically
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    same = load_dataset("fashion-mnist", data_dir=image_data.DEBIAN_FASHION_MNIST_DIR)
    np.testing.assert_array_equal(same.y_test, ds.y_test)


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(image_data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "not-installed")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_tfds_path_with_mock_data(no_debian, name):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7):
        ds = load_dataset(name)
    assert ds.name == name
    assert ds.x_train.shape == (7, 28, 28) and ds.x_test.shape == (7, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.y_train.min() >= 0 and ds.y_train.max() < 10


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_dataset_without_tfds_is_one_clear_error(no_debian, monkeypatch, name):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(FileNotFoundError, match="tensorflow_datasets is not installed") as info:
        load_dataset(name)
    msg = str(info.value)
    assert "--data-dir" in msg and "dlx-jax[tfds]" in msg and "mnist-5k" in msg
    assert ("apt-get install dataset-fashion-mnist" in msg) == (name == "fashion-mnist")


def test_missing_dataset_with_tfds_but_no_prepared_data(no_debian, monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    boom = RuntimeError("not prepared")

    def fail(*args, **kwargs):
        assert kwargs.get("download") is False  # never downloads implicitly
        raise boom

    monkeypatch.setattr(tfds, "data_source", fail)
    with pytest.raises(FileNotFoundError, match="TFDS could not provide it: RuntimeError") as info:
        load_dataset("mnist")
    assert info.value.__cause__ is boom


# ------------------------------------------------------------------------------ to_float_images


def test_to_float_images_numpy_and_jax():
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    y = to_float_images(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (1, 2, 2, 1)
    np.testing.assert_array_equal(y[..., 0], x.astype(np.float64).astype(np.float32) / np.float32(255))
    assert y.max() == 1.0 and y.min() == 0.0
    yj = to_float_images(jnp.asarray(x))
    assert isinstance(yj, jax.Array) and yj.dtype == jnp.float32
    # XLA may rewrite x / 255 as x * (1/255): one float32 ulp apart
    np.testing.assert_allclose(np.asarray(yj), y, rtol=RTOL_JIT_F32, atol=0)
    np.testing.assert_allclose(
        np.asarray(jax.jit(to_float_images)(jnp.asarray(x))), y, rtol=RTOL_JIT_F32, atol=0
    )
    x4 = np.zeros((2, 3, 3, 3), np.uint8)
    assert to_float_images(x4).shape == (2, 3, 3, 3)


def test_to_float_images_rejects_bad_input():
    with pytest.raises(ValueError, match="expects uint8 pixels 0..255 but got float32"):
        to_float_images(np.zeros((1, 28, 28), np.float32))
    with pytest.raises(
        ValueError, match=r"expects \(n, h, w\) or \(n, h, w, c\) images, got shape \(28, 28\)"
    ):
        to_float_images(np.zeros((28, 28), np.uint8))


# ------------------------------------------------------------------------------ batching


def test_batch_indices_is_a_permutation_prefix(key):
    idx = np.asarray(batch_indices(key, 10, batch_size=3))
    assert idx.shape == (3, 3) and idx.dtype == np.int32
    assert len(set(idx.ravel())) == 9 and set(idx.ravel()) <= set(range(10))
    full = np.asarray(jax.random.permutation(key, 10))
    np.testing.assert_array_equal(idx.ravel(), full[:9])  # documented: order = permutation(key, n)


def test_batch_indices_keep_remainder_wraps(key):
    idx = np.asarray(batch_indices(key, 10, batch_size=4, drop_remainder=False))
    assert idx.shape == (3, 4)
    assert set(idx.ravel()) == set(range(10))
    np.testing.assert_array_equal(idx.ravel()[10:], idx.ravel()[:2])  # wrap-around fill
    small = np.asarray(batch_indices(None, 2, batch_size=5, shuffle=False, drop_remainder=False))
    np.testing.assert_array_equal(small, [[0, 1, 0, 1, 0]])


def test_batch_indices_no_shuffle_jit_vmap(key):
    np.testing.assert_array_equal(
        np.asarray(batch_indices(None, 6, batch_size=2, shuffle=False)), [[0, 1], [2, 3], [4, 5]]
    )
    f = jax.jit(batch_indices, static_argnames=("n", "batch_size", "shuffle", "drop_remainder"))
    np.testing.assert_array_equal(f(key, 50, batch_size=8), batch_indices(key, 50, batch_size=8))
    keys = jax.random.split(key, 3)
    batched = jax.vmap(lambda k: batch_indices(k, 20, batch_size=5))(keys)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], batch_indices(keys[i], 20, batch_size=5))
    assert not np.array_equal(batched[0], batched[1])  # fresh key per epoch → new order


def test_batch_indices_errors(key):
    with pytest.raises(ValueError, match="batch_size=11 exceeds n=10"):
        batch_indices(key, 10, batch_size=11)
    with pytest.raises(ValueError, match="needs n >= 1 and batch_size >= 1"):
        batch_indices(key, 10, batch_size=0)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        batch_indices(None, 10, batch_size=2)


def test_iterate_batches_covers_epoch_once(key):
    x = np.arange(23 * 2).reshape(23, 2)
    y = np.arange(23)
    batches = list(iterate_batches(key, x, y, batch_size=5))
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]  # last partial batch kept
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(23)) and not np.array_equal(seen, y)
    for xb, yb in batches:
        np.testing.assert_array_equal(xb, x[yb])  # inputs and targets stay paired
    ordered = list(iterate_batches(None, x, y, batch_size=10, shuffle=False))
    np.testing.assert_array_equal(ordered[0][1], np.arange(10))


def test_iterate_batches_errors(key):
    with pytest.raises(ValueError, match="x has 3 examples but y has 2"):
        iterate_batches(key, np.zeros(3), np.zeros(2), batch_size=2)  # raised at the call
    with pytest.raises(ValueError, match="batch_size >= 1"):
        iterate_batches(key, np.zeros(3), np.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        iterate_batches(None, np.zeros(3), np.zeros(3), batch_size=2)
