"""Tests of the data layer (CPU, tiny synthetic data; no real dataset needed)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.cifar import write_cifar_batches
from helpers.images import jpeg

from tern_jax.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    ArrayDataset,
    DataNotFoundError,
    apply_crop_flip,
    augment_and_normalize,
    crop_flip_params,
    download_cifar10,
    epoch_permutation,
    eval_transform,
    imagenet_batches,
    load_cifar10,
    load_dataset,
    load_digits,
    normalize,
    random_crop_flip,
    subset,
    train_transform,
)
from tern_jax.data import cifar10 as cifar_mod
from tern_jax.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop_box,
    random_resized_crop_box,
)

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _fake_cifar(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,)).astype(np.int32)
    return images, labels


@pytest.fixture
def no_default_places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make sure no real CIFAR-10 on this machine (or tfds) leaks into the tests."""
    monkeypatch.delenv("TERN_JAX_DATA_DIR", raising=False)
    monkeypatch.setattr(cifar_mod, "default_search_dirs", lambda: [tmp_path / "nowhere"])

    def no_tfds(data_dir: object) -> ArrayDataset:
        raise ImportError("tensorflow-datasets disabled in tests")

    monkeypatch.setattr(cifar_mod, "_tfds_cifar10", no_tfds)


# --------------------------------------------------------------------------------------
# CIFAR-10 folder loader
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_folder_roundtrip(tmp_path: Path, bytes_keys: bool) -> None:
    images, labels = _fake_cifar(30)
    folder = write_cifar_batches(
        tmp_path / "cifar-10-batches-py", images, labels, bytes_keys=bytes_keys
    )
    if bytes_keys:
        with open(folder / "data_batch_1", "rb") as f:
            assert b"data" in pickle.load(f, encoding="bytes")
    ds = load_cifar10(folder, source="folder")
    assert isinstance(ds, ArrayDataset)
    assert ds.train_images.shape == (25, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (5, 32, 32, 3)
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train_images, images[:25])
    np.testing.assert_array_equal(ds.test_images, images[25:])
    np.testing.assert_array_equal(ds.train_labels, labels[:25])
    np.testing.assert_array_equal(ds.test_labels, labels[25:])
    assert ds.num_classes == 10 and ds.name == "cifar10"
    np.testing.assert_allclose(ds.mean, np.array([125.3, 123.0, 113.9]) / 255)
    np.testing.assert_allclose(ds.std, np.array([63.0, 62.1, 66.7]) / 255)


def test_cifar_chw_layout(tmp_path: Path) -> None:
    """A row of the pickle is the R plane, then G, then B (row-major 32x32 each)."""
    images = np.zeros((12, 32, 32, 3), np.uint8)
    images[0, 1, 2] = (10, 20, 30)
    folder = write_cifar_batches(tmp_path / "c", images, np.zeros(12, int), per_batch=2)
    with open(folder / "data_batch_1", "rb") as f:
        row = pickle.load(f)["data"][0]
    assert (row[32 + 2], row[1024 + 32 + 2], row[2048 + 32 + 2]) == (10, 20, 30)
    ds = load_cifar10(folder)
    assert ds.num_train == 10 and ds.num_test == 2
    np.testing.assert_array_equal(ds.train_images[0, 1, 2], [10, 20, 30])


def test_cifar_parent_dir_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = _fake_cifar(12)
    write_cifar_batches(tmp_path / "cifar-10-batches-py", images, labels)
    ds = load_cifar10(tmp_path)  # the parent of the batches folder
    np.testing.assert_array_equal(ds.train_labels, labels[:10])
    ds = load_dataset("cifar10", data_dir=tmp_path, source="folder")
    assert ds.num_test == 2
    monkeypatch.setenv("TERN_JAX_DATA_DIR", str(tmp_path))
    assert load_cifar10().num_train == 10


def test_cifar_missing_raises_data_not_found(tmp_path: Path, no_default_places: None) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10(tmp_path / "does-not-exist")
    msg = str(info.value)
    assert "--set data.data_dir=" in msg and "--data_dir" not in msg
    assert "--set data_dir" not in msg and "TERN_JAX_DATA_DIR" in msg
    assert "cifar-10-python.tar.gz" in msg and "does-not-exist" in msg
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="--set data.data_dir="):
        load_cifar10()  # nothing in the (patched) usual places, no env var, no tfds


def _write_ok(tmp_path: Path) -> Path:
    images, labels = _fake_cifar(12)
    return write_cifar_batches(tmp_path / "cifar-10-batches-py", images, labels)


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    folder = _write_ok(tmp_path)
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(folder)


def test_cifar_missing_batch(tmp_path: Path) -> None:
    folder = _write_ok(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path)


def test_cifar_bad_labels_and_sizes(tmp_path: Path) -> None:
    folder = _write_ok(tmp_path)
    with open(folder / "data_batch_2", "rb") as f:
        entry = pickle.load(f)
    bad = dict(entry, labels=[12] * len(entry["labels"]))
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump(bad, f)
    with pytest.raises(ValueError, match=r"data_batch_2.*labels out of range"):
        load_cifar10(folder)
    bad = dict(entry, data=entry["data"][:, :100])
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump(bad, f)
    with pytest.raises(ValueError, match=r"data_batch_2.*shape"):
        load_cifar10(folder)
    bad = dict(entry, labels=entry["labels"][:-1])
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump(bad, f)
    with pytest.raises(ValueError, match="data_batch_2"):
        load_cifar10(folder)


def test_cifar_expected_counts(tmp_path: Path) -> None:
    folder = _write_ok(tmp_path)
    with pytest.raises(ValueError, match="expected 50000 / 10000"):
        cifar_mod.read_cifar_folder(folder, expected_counts=(50000, 10000))


def test_cifar_unknown_source() -> None:
    with pytest.raises(ValueError, match="source"):
        load_cifar10(source="s3")


def test_download_cifar10_from_local_archive(tmp_path: Path) -> None:
    images, labels = _fake_cifar(12)
    staged = write_cifar_batches(tmp_path / "stage" / "cifar-10-batches-py", images, labels)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staged, arcname="cifar-10-batches-py")
    out = download_cifar10(tmp_path / "root", url=archive.as_uri(), md5=None)
    assert out == tmp_path / "root" / "cifar-10-batches-py"
    np.testing.assert_array_equal(load_cifar10(out).train_images, images[:10])
    with pytest.raises(ValueError, match="MD5"):
        download_cifar10(tmp_path / "other", url=archive.as_uri(), md5="0" * 32)


def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_missing_data_message_says_what_the_folder_holds(tmp_path: Path,
                                                         no_default_places: None) -> None:
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "train.csv").write_text("a,b")
    with pytest.raises(DataNotFoundError, match=r"mydata \(data_dir\): holds no "
                       r"cifar-10-batches-py/ .*\(it has: train.csv\)"):
        load_cifar10(tmp_path / "mydata")
    with pytest.raises(DataNotFoundError, match=r"nope \(data_dir\): does not exist"):
        load_cifar10(tmp_path / "nope")


def test_download_leaves_an_incomplete_folder_alone(tmp_path: Path) -> None:
    target = tmp_path / "cifar-10-batches-py"
    target.mkdir()
    (target / "data_batch_1").write_bytes(b"partial")
    with pytest.raises(FileExistsError, match="holds no test_batch; it is left untouched"):
        download_cifar10(tmp_path, url="file:///nonexistent.tar.gz", md5=None)
    assert _bytes_of(target) == {"data_batch_1": b"partial"}


def test_cifar_tfds_source_with_mock() -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        ds = load_cifar10(source="tfds")
    assert ds.train_images.shape == (4, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.dtype == np.int32 and ds.test_labels.shape == (4,)


def test_subset() -> None:
    images, labels = _fake_cifar(40)
    ds = ArrayDataset(images[:30], labels[:30], images[30:], labels[30:], 10, (0.5,), (0.2,), "x")
    sub = subset(ds, 7, 3, seed=1)
    assert sub.num_train == 7 and sub.num_test == 3 and sub.name == "x"
    rows = {r.tobytes() for r in ds.train_images}
    assert all(r.tobytes() in rows for r in sub.train_images)
    assert len({r.tobytes() for r in sub.train_images}) == 7
    np.testing.assert_array_equal(subset(ds, 7, 3, seed=1).train_labels, sub.train_labels)
    assert subset(ds, None, 1000).num_test == 10


# --------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------


# Jitted once at module level so that tests sharing shapes share compilations (CPU compile
# time dominates these tests).
_rcf = jax.jit(random_crop_flip, static_argnames=("pad", "flip"))
_params = jax.jit(crop_flip_params, static_argnames=("n", "pad", "flip"))
_aug_norm = jax.jit(augment_and_normalize, static_argnames=("pad", "flip"))
_norm = jax.jit(normalize, static_argnames=("dtype",))
_perm = jax.jit(epoch_permutation, static_argnames=("n", "batch_size"))


def _numpy_crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, pad: int):
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.stack([padded[i, oy : oy + h, ox : ox + w] for i, (oy, ox) in enumerate(offsets)])
    out[flips] = out[flips][:, :, ::-1]
    return out


def _numpy_normalize(images: np.ndarray, mean, std) -> np.ndarray:
    return (images / 255.0 - np.asarray(mean)) / np.asarray(std)


def test_random_crop_flip_matches_numpy_reference() -> None:
    images, _ = _fake_cifar(64, seed=3)
    key = jax.random.key(0)
    out = _rcf(key, jnp.asarray(images))
    assert out.shape == images.shape and out.dtype == jnp.uint8
    offsets, flips = _params(key, n=64, pad=4)
    offsets, flips = np.asarray(offsets), np.asarray(flips)
    assert offsets.min() >= 0 and offsets.max() <= 8
    assert len({tuple(o) for o in offsets}) > 10  # offsets really vary per image
    np.testing.assert_array_equal(np.asarray(out), _numpy_crop_flip(images, offsets, flips, 4))
    # determinism: same key, same result; other key, other result
    np.testing.assert_array_equal(np.asarray(_rcf(key, jnp.asarray(images))), out)
    other = _rcf(jax.random.key(1), jnp.asarray(images))
    assert not np.array_equal(np.asarray(other), np.asarray(out))


def test_every_crop_is_a_window_of_the_padded_image() -> None:
    """Brute force: each output equals some (possibly mirrored) window of the padded input."""
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(64, 32, 32, 3), dtype=np.uint8)  # no zero pixels
    pad = 4
    out = np.asarray(_rcf(jax.random.key(5), jnp.asarray(images)))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    shifts = [(y, x) for y in range(2 * pad + 1) for x in range(2 * pad + 1)]
    for i in range(len(images)):
        found = [
            (y, x, s)
            for y, x in shifts
            for s in (1, -1)
            if np.array_equal(out[i], padded[i, y : y + 32, x : x + 32][:, ::s])
        ]
        assert len(found) == 1, (i, found)


def test_flip_rate_and_float_input() -> None:
    _, flips = _params(jax.random.key(2), n=4096)
    rate = float(np.mean(np.asarray(flips)))
    assert 0.45 < rate < 0.55
    # an asymmetric float image, pad=0 so only flips act: each output is it or its mirror
    img = np.arange(4 * 4, dtype=np.float32).reshape(1, 4, 4, 1)
    batch = jnp.asarray(np.repeat(img, 64, axis=0))
    out = np.asarray(_rcf(jax.random.key(3), batch, pad=0))
    assert out.dtype == np.float32
    mirrored = np.all(out == img[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(mirrored | np.all(out == img, axis=(1, 2, 3)))
    assert 0.25 < mirrored.mean() < 0.75
    unflipped = np.asarray(_rcf(jax.random.key(3), batch, pad=0, flip=False))
    np.testing.assert_array_equal(unflipped, np.asarray(batch))


def test_apply_crop_flip_explicit() -> None:
    img = jnp.asarray(np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3, 1))
    fn = jax.jit(apply_crop_flip, static_argnames=("pad",))
    out = fn(img, jnp.array([[0, 0]]), jnp.array([False]), pad=1)
    expected = np.array([[0, 0, 0], [0, 1, 2], [0, 4, 5]], np.uint8)
    np.testing.assert_array_equal(np.asarray(out)[0, :, :, 0], expected)
    out = fn(img, jnp.array([[2, 1]]), jnp.array([True]), pad=1)
    expected = np.array([[6, 5, 4], [9, 8, 7], [0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(np.asarray(out)[0, :, :, 0], expected)


def test_normalize_matches_numpy() -> None:
    images, _ = _fake_cifar(64)
    out = _norm(jnp.asarray(images), CIFAR10_MEAN, CIFAR10_STD)
    assert out.dtype == jnp.float32 and out.shape == images.shape
    ref = _numpy_normalize(images, CIFAR10_MEAN, CIFAR10_STD)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    half = _norm(jnp.asarray(images), CIFAR10_MEAN, CIFAR10_STD, dtype=jnp.bfloat16)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), ref, rtol=1e-2, atol=1e-2)


def test_augment_and_normalize() -> None:
    images, _ = _fake_cifar(64)
    key = jax.random.key(4)
    out = _aug_norm(key, jnp.asarray(images), CIFAR10_MEAN, CIFAR10_STD)
    assert out.shape == (64, 32, 32, 3) and out.dtype == jnp.float32
    cropped = np.asarray(_rcf(key, jnp.asarray(images)))
    ref = _numpy_normalize(cropped, CIFAR10_MEAN, CIFAR10_STD)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    plain = _aug_norm(key, jnp.asarray(images), CIFAR10_MEAN, CIFAR10_STD, pad=0, flip=False)
    ref = _numpy_normalize(images, CIFAR10_MEAN, CIFAR10_STD)
    np.testing.assert_allclose(np.asarray(plain), ref, rtol=1e-5, atol=1e-5)


def test_epoch_permutation() -> None:
    idx = _perm(jax.random.key(0), n=103, batch_size=10)
    assert idx.shape == (10, 10) and idx.dtype == jnp.int32
    flat = np.asarray(idx).ravel()
    assert len(np.unique(flat)) == flat.size and flat.min() >= 0 and flat.max() < 103
    again = _perm(jax.random.key(1), n=103, batch_size=10)  # same shapes: no recompilation
    assert not np.array_equal(np.asarray(again), np.asarray(idx))
    with pytest.raises(ValueError):
        epoch_permutation(jax.random.key(0), 3, 4)


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


def test_digits() -> None:
    ds = load_digits()
    assert ds.train_images.shape[1:] == (8, 8, 1) and ds.train_images.dtype == np.uint8
    assert ds.num_train + ds.num_test == 1797
    assert ds.num_test == int(np.ceil(0.2 * 1797))
    assert ds.train_images.max() == 255 and ds.num_classes == 10 and ds.name == "digits"
    assert ds.train_labels.dtype == np.int32 and set(np.unique(ds.test_labels)) == set(range(10))
    np.testing.assert_allclose(ds.mean[0], ds.train_images.mean() / 255, rtol=1e-6)
    np.testing.assert_allclose(ds.std[0], (ds.train_images / 255).std(), rtol=1e-6)
    again = load_digits()
    np.testing.assert_array_equal(again.train_images, ds.train_images)
    np.testing.assert_array_equal(again.test_labels, ds.test_labels)
    other = load_digits(seed=1)
    assert not np.array_equal(other.test_labels, ds.test_labels)
    assert load_dataset("digits", test_fraction=0.5).num_test == 899


def test_load_dataset_unknown() -> None:
    with pytest.raises(ValueError, match="imagenet_batches"):
        load_dataset("imagenet2012")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")


# --------------------------------------------------------------------------------------
# ImageNet transforms and loader
# --------------------------------------------------------------------------------------


def test_imagenet_train_transform() -> None:
    data = jpeg(300, 200)
    out = train_transform(np.random.default_rng(0), data)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    again = train_transform(np.random.default_rng(0), data)
    np.testing.assert_array_equal(out, again)
    grey = np.zeros((50, 70), np.uint8)
    assert train_transform(np.random.default_rng(1), grey, size=32).shape == (32, 32, 3)


def test_random_resized_crop_box() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(rng, 300, 200)
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
        assert 0.08 * 300 * 200 * 0.9 <= w * h <= 300 * 200
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # a very wide image with an impossible scale falls back to a centered clamped window
    left, top, w, h = random_resized_crop_box(rng, 1000, 10, scale=(1.0, 1.0))
    assert (w, h) == (13, 10) and left == (1000 - 13) // 2 and top == 0


def test_imagenet_eval_transform_center_crop_geometry() -> None:
    # width 512, height 256 -> already short side 256: crop columns 144..368, rows 16..240
    x = np.tile(np.arange(512, dtype=np.int64)[None, :], (256, 1))
    y = np.tile(np.arange(256, dtype=np.int64)[:, None], (1, 512))
    img = np.stack([x % 256, y, x // 256], axis=-1).astype(np.uint8)
    out = eval_transform(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert center_crop_box(512, 256, 224) == (144, 16)
    np.testing.assert_array_equal(out, img[16:240, 144:368])
    # a portrait JPEG gets resized to short side 256 first
    out = eval_transform(jpeg(100, 180))
    assert out.shape == (224, 224, 3)


def test_normalize_a_host_batch_with_the_imagenet_statistics() -> None:
    batch = np.full((2, 4, 4, 3), 255, np.uint8)
    out = normalize(batch, IMAGENET_MEAN, IMAGENET_STD)
    assert out.dtype == np.float32
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-5)


def test_imagenet_without_prepared_data(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataNotFoundError, match="tfds build imagenet2012"):
        imagenet_batches("train", 8, data_dir=tmp_path)


def test_imagenet_batches_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grain pipeline on a fake random-access source (no tfds needed)."""
    from tern_jax.data import imagenet as inet

    examples = [{"image": jpeg(40 + i, 30, seed=i), "label": i % 7} for i in range(10)]
    monkeypatch.setattr(inet, "imagenet_source", lambda split, data_dir: examples)
    kw = dict(train=True, seed=3, num_epochs=1, image_size=16, num_workers=0, num_threads=3)
    batches = list(imagenet_batches("train", 4, **kw))
    assert len(batches) == 2  # drop remainder in training
    assert batches[0][0].shape == (4, 16, 16, 3) and batches[0][0].dtype == np.float32
    again = list(imagenet_batches("train", 4, **kw))
    np.testing.assert_array_equal(batches[1][0], again[1][0])
    np.testing.assert_array_equal(batches[1][1], again[1][1])
    evals = list(imagenet_batches("validation", 4, train=False, image_size=16, dtype=np.uint8,
                                  num_workers=0))
    assert [len(b[1]) for b in evals] == [4, 4, 2] and evals[0][0].dtype == np.uint8
    np.testing.assert_array_equal(np.concatenate([b[1] for b in evals]), [i % 7 for i in range(10)])
    # eval resizes the shorter side to 16 * 256 / 224 -> 18, then center-crops 16
    np.testing.assert_array_equal(evals[2][0][1],
                                  eval_transform(examples[9]["image"], size=16, resize_size=18))
    # process 1 of 2 reads positions 4..7 of each global batch of 8; the rest is padding
    sharded = list(imagenet_batches("validation", 4, train=False, image_size=16, shard_index=1,
                                    num_shards=2, pad_remainder=True, num_workers=0))
    assert len(sharded) == 2
    np.testing.assert_array_equal(sharded[0][1], [4, 5, 6, 0])
    np.testing.assert_array_equal(sharded[0][2], [1, 1, 1, 1])
    np.testing.assert_array_equal(sharded[1][2], [0, 0, 0, 0])
    with pytest.raises(ValueError, match="pad_remainder"):
        imagenet_batches("validation", 4, train=False, shard_index=1, num_shards=2)


