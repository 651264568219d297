"""ImageNet (ILSVRC-2012) streamed from tensorflow-datasets, decoded on the host.

The images stay JPEG-compressed in the tfds ``imagenet2012`` dataset (which you download
and prepare yourself, see :data:`PREPARE_INSTRUCTIONS`); a thread pool decodes them with
Pillow and applies the standard transforms:

* train: random-resized-crop (scale ``(0.08, 1)``, aspect ratio ``(3/4, 4/3)``) to 224,
  then a random horizontal flip;
* eval: resize the shorter side to 256, then center-crop 224;

and batches are normalized with the ImageNet mean/std.  :func:`prefetch_to_device` keeps a
few batches ahead on the accelerator.

The per-image transforms (:func:`train_transform`, :func:`eval_transform`) are plain
NumPy/Pillow functions, usable and testable without tensorflow-datasets.

A dataset prepared in ``array_record`` format (``tfds build imagenet2012
--file_format=array_record``) is read through tfds random-access data sources and needs
no TensorFlow; one prepared in the default TFRecord format is read with ``tf.data`` and
needs TensorFlow.
"""

from __future__ import annotations

import collections
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from tern_jax.data.cifar10 import DataNotFoundError

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_NUM_CLASSES",
    "IMAGENET_STD",
    "PREPARE_INSTRUCTIONS",
    "center_crop_box",
    "decode_image",
    "eval_transform",
    "imagenet_batches",
    "normalize_batch",
    "prefetch_to_device",
    "random_resized_crop_box",
    "train_transform",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGENET_NUM_CLASSES = 1000
IMAGENET_TRAIN_SIZE = 1_281_167
IMAGENET_VAL_SIZE = 50_000

PREPARE_INSTRUCTIONS = """\
ImageNet must be downloaded and prepared by you with tensorflow-datasets:
  1. pip install tensorflow-datasets tensorflow   (preparing needs tensorflow)
  2. download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from
     https://image-net.org/ (free account, non-commercial terms) and put them in
     <data_dir>/downloads/manual/
  3. tfds build imagenet2012 --data_dir <data_dir> --file_format array_record
     (array_record can later be read without tensorflow; the default TFRecord format
     needs tensorflow at training time too)
  4. pass the same <data_dir> (data_dir=..., or --data_dir) to tern_jax; without it
     tensorflow-datasets uses $TFDS_DATA_DIR or ~/tensorflow_datasets."""


# --------------------------------------------------------------------------------------
# Per-image transforms (NumPy / Pillow only)
# --------------------------------------------------------------------------------------


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow ships with most environments
        raise ImportError("the ImageNet transforms need Pillow: pip install Pillow") from e
    return Image


def decode_image(data: bytes | np.ndarray | PILImage.Image) -> PILImage.Image:
    """Turn encoded bytes (JPEG/PNG), an ``(H, W[, C])`` uint8 array or a PIL image into RGB.

    Greyscale and CMYK images (a few hundred in ImageNet) are converted to RGB.
    """
    Image = _pil()
    if isinstance(data, Image.Image):
        img = data
    elif isinstance(data, bytes | bytearray | memoryview):
        img = Image.open(io.BytesIO(bytes(data)))
    else:
        arr = np.asarray(data)
        if arr.dtype == object and arr.ndim == 0:  # tfds may hand bytes wrapped in an array
            return decode_image(arr.item())
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        img = Image.fromarray(arr.astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def random_resized_crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Choose the window of a random-resized-crop (the Inception / torchvision recipe).

    Up to ``attempts`` times, draw an area fraction uniformly from ``scale`` and an aspect
    ratio (width / height) log-uniformly from ``ratio``; the first window that fits is
    placed uniformly at random.  If none fits, fall back to the largest centered window
    whose aspect ratio is clamped into ``ratio``.

    Returns:
        ``(left, top, crop_width, crop_height)`` in pixels.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int]:
    """Top-left ``(left, top)`` of a centered ``size`` x ``size`` window (torchvision rounding)."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def train_transform(
    rng: np.random.Generator,
    image: bytes | np.ndarray | PILImage.Image,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    flip: bool = True,
) -> np.ndarray:
    """Random-resized-crop to ``size`` x ``size`` (bilinear), then a random horizontal flip.

    Args:
        rng: NumPy generator supplying all the randomness (so results are reproducible).
        image: encoded bytes, a uint8 ``(H, W[, C])`` array or a PIL image.
        size: output side length.
        scale: range of the window's area as a fraction of the image's.
        ratio: range of the window's aspect ratio (width / height).
        flip: mirror left-right with probability 0.5.

    Returns:
        uint8 array ``(size, size, 3)``.
    """
    Image = _pil()
    img = decode_image(image)
    left, top, w, h = random_resized_crop_box(rng, img.width, img.height, scale, ratio)
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    arr = np.asarray(out, dtype=np.uint8)
    if flip and rng.random() < 0.5:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def eval_transform(
    image: bytes | np.ndarray | PILImage.Image,
    size: int = 224,
    resize_size: int = 256,
) -> np.ndarray:
    """Resize the shorter side to ``resize_size`` (bilinear), then center-crop ``size``.

    Returns:
        uint8 array ``(size, size, 3)``.
    """
    Image = _pil()
    img = decode_image(image)
    w, h = img.width, img.height
    if w <= h:
        new_w, new_h = resize_size, int(resize_size * h / w)
    else:
        new_w, new_h = int(resize_size * w / h), resize_size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = center_crop_box(new_w, new_h, size)
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return np.ascontiguousarray(arr)


def normalize_batch(
    images: np.ndarray,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    dtype: Any = np.float32,
) -> np.ndarray:
    """``(x / 255 - mean) / std`` per channel on the host, for uint8 NHWC batches."""
    scale = np.asarray(1.0 / (255.0 * np.asarray(std)), np.float32)
    shift = np.asarray(np.asarray(mean) / np.asarray(std), np.float32)
    return (images.astype(np.float32) * scale - shift).astype(dtype)


# --------------------------------------------------------------------------------------
# Reading tfds imagenet2012
# --------------------------------------------------------------------------------------


def _open_imagenet(split: str, data_dir: str | os.PathLike[str] | None) -> tuple[str, Any]:
    """Return ``("random", data_source)`` or ``("tf", builder)`` for the prepared dataset.

    Raises:
        DataNotFoundError: tensorflow-datasets missing, or the dataset not prepared.
        RuntimeError: prepared in TFRecord format but TensorFlow is not installed.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataNotFoundError(
            "ImageNet is read through tensorflow-datasets, which is not installed "
            "(pip install tensorflow-datasets).\n" + PREPARE_INSTRUCTIONS
        ) from e
    builder = tfds.builder("imagenet2012", data_dir=None if data_dir is None else str(data_dir))
    try:
        source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        return "random", source
    except Exception as e:
        if not builder.is_prepared():
            raise DataNotFoundError(
                f"tensorflow-datasets has no prepared 'imagenet2012' in {builder.data_dir}.\n"
                + PREPARE_INSTRUCTIONS
            ) from e
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            raise RuntimeError(
                f"imagenet2012 in {builder.data_dir} is prepared in "
                f"{builder.info.file_format} format, which only TensorFlow can read (not "
                "installed).  Install tensorflow, or re-prepare it with "
                "`tfds build imagenet2012 --file_format array_record`."
            ) from e
        return "tf", builder


def _random_access_stream(
    source: Any,
    *,
    train: bool,
    seed: int,
    num_epochs: int | None,
    shard_index: int,
    num_shards: int,
) -> Iterator[tuple[tuple[int, int], Callable[[], tuple[Any, int]]]]:
    """Yield ``((epoch, index), read)`` per example; ``read()`` fetches (image, label)."""
    indices = np.arange(len(source))[shard_index::num_shards]
    epoch = 0
    while num_epochs is None or epoch < num_epochs:
        order = indices
        if train:
            order = np.random.default_rng([seed, epoch]).permutation(indices)
        for i in order:
            i = int(i)

            def read(i: int = i) -> tuple[Any, int]:
                ex = source[i]
                return ex["image"], int(ex["label"])

            yield (epoch, i), read
        epoch += 1


def _tf_stream(
    builder: Any,
    split: str,
    *,
    train: bool,
    seed: int,
    num_epochs: int | None,
    shard_index: int,
    num_shards: int,
    shuffle_buffer: int = 10_000,
) -> Iterator[tuple[tuple[int, int], Callable[[], tuple[Any, int]]]]:
    """Like :func:`_random_access_stream`, reading a TFRecord dataset with ``tf.data``."""
    import tensorflow_datasets as tfds

    if num_shards > 1:
        split = tfds.even_splits(split, n=num_shards, drop_remainder=True)[shard_index]
    epoch = 0
    while num_epochs is None or epoch < num_epochs:
        ds = builder.as_dataset(
            split=split,
            decoders={"image": tfds.decode.SkipDecoding()},
            shuffle_files=train,
            read_config=tfds.ReadConfig(shuffle_seed=seed + epoch),
        )
        if train:
            ds = ds.shuffle(shuffle_buffer, seed=seed + epoch)
        for k, ex in enumerate(tfds.as_numpy(ds)):
            item = (ex["image"], int(ex["label"]))
            yield (epoch, k), (lambda item=item: item)
        epoch += 1


def imagenet_batches(
    split: str,
    batch_size: int,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    train: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
    image_size: int = 224,
    dtype: Any = np.float32,
    num_workers: int | None = None,
    prefetch_batches: int = 2,
    drop_remainder: bool | None = None,
    shard_index: int | None = None,
    num_shards: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream ImageNet batches ``(images, labels)`` from tfds ``imagenet2012``.

    Args:
        split: tfds split, e.g. ``"train"``, ``"validation"`` or ``"train[:1%]"``.
        batch_size: examples per batch (per process when sharded).
        data_dir: tensorflow-datasets data dir holding the prepared dataset.
        train: train transform + shuffling (else eval transform, fixed order).
        seed: seed of the shuffling and of the per-image augmentation; the stream is
            deterministic for a given seed (it does not depend on thread timing).
        num_epochs: passes over the split; ``None`` means forever for ``train`` and once
            otherwise.
        image_size: output side length (224).
        dtype: ``np.float32`` (or another float dtype) for normalized images, or
            ``np.uint8`` for raw pixels (normalize on device, e.g. with
            :func:`tern_jax.data.augment.normalize` and :data:`IMAGENET_MEAN`/``STD``).
        num_workers: decoding threads; default ``min(32, os.cpu_count())``.
        prefetch_batches: batches decoded ahead of the one being consumed.
        drop_remainder: drop a final partial batch; default ``train``.
        shard_index, num_shards: this process's share of the data; default
            ``jax.process_index()`` / ``jax.process_count()``.

    Yields:
        ``images`` ``(B, image_size, image_size, 3)`` of ``dtype`` and ``labels`` ``(B,)``
        int32.

    Raises:
        DataNotFoundError: tensorflow-datasets or the prepared dataset is missing; the
            message says how to prepare it.
        RuntimeError: the dataset is in TFRecord format and TensorFlow is missing.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if shard_index is None or num_shards is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        num_shards = jax.process_count() if num_shards is None else num_shards
    if num_epochs is None and not train:
        num_epochs = 1
    if drop_remainder is None:
        drop_remainder = train
    kind, handle = _open_imagenet(split, data_dir)  # fails early, before any thread starts
    common: dict[str, Any] = dict(
        train=train,
        seed=seed,
        num_epochs=num_epochs,
        shard_index=shard_index,
        num_shards=num_shards,
    )
    if kind == "random":
        stream = _random_access_stream(handle, **common)
    else:
        stream = _tf_stream(handle, split, **common)
    return _batched(
        stream,
        batch_size=batch_size,
        train=train,
        seed=seed,
        image_size=image_size,
        dtype=dtype,
        num_workers=num_workers or min(32, os.cpu_count() or 1),
        prefetch_batches=prefetch_batches,
        drop_remainder=drop_remainder,
    )


def _batched(
    stream: Iterator[tuple[tuple[int, int], Callable[[], tuple[Any, int]]]],
    *,
    batch_size: int,
    train: bool,
    seed: int,
    image_size: int,
    dtype: Any,
    num_workers: int,
    prefetch_batches: int,
    drop_remainder: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Read, decode and transform examples in a thread pool and assemble ordered batches."""

    def work(key: tuple[int, int], read: Callable[[], tuple[Any, int]]) -> tuple[np.ndarray, int]:
        image, label = read()
        if train:
            rng = np.random.default_rng([seed, key[0], key[1], 1])
            return train_transform(rng, image, size=image_size), label
        return eval_transform(image, size=image_size), label

    raw = np.dtype(dtype) == np.uint8
    window = batch_size * (prefetch_batches + 1)
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="imagenet")
    pending: collections.deque[Future[tuple[np.ndarray, int]]] = collections.deque()
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window:
                nxt = next(stream, None)
                if nxt is None:
                    exhausted = True
                else:
                    pending.append(pool.submit(work, *nxt))
            if len(pending) < batch_size and (drop_remainder or not pending):
                return
            results = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            images = np.stack([r[0] for r in results])
            labels = np.asarray([r[1] for r in results], np.int32)
            yield (images if raw else normalize_batch(images, dtype=dtype)), labels
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------------------
# Device prefetch
# --------------------------------------------------------------------------------------


def prefetch_to_device(
    iterator: Iterable[Any], size: int = 2, sharding: Any = None
) -> Iterator[Any]:
    """Keep ``size`` batches (any pytrees) ahead on device with ``jax.device_put``.

    ``device_put`` is asynchronous, so the host-to-device copies of upcoming batches
    overlap with the computation on the current one.

    Args:
        iterator: host batches (pytrees of NumPy arrays).
        size: number of batches transferred ahead (at least 1).
        sharding: optional ``jax.sharding.Sharding`` (or pytree of them) for ``device_put``;
            ``None`` puts the batch on the default device.

    Yields:
        The same batches as ``jax.Array`` pytrees, in order.
    """
    import jax

    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    queue: collections.deque[Any] = collections.deque()
    it = iter(iterator)

    def enqueue(n: int) -> None:
        for _ in range(n):
            try:
                batch = next(it)
            except StopIteration:
                return
            queue.append(jax.device_put(batch, sharding))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)
