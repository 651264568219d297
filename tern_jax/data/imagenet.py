"""ImageNet (ILSVRC-2012) streamed from tensorflow-datasets through grain.

The images stay JPEG-compressed in the tfds ``imagenet2012`` dataset (which you download
and prepare yourself, see :data:`PREPARE_INSTRUCTIONS`); grain worker processes decode them
with Pillow and apply the standard transforms:

* train: random-resized-crop (scale ``(0.08, 1)``, aspect ratio ``(3/4, 4/3)``) to 224,
  then a random horizontal flip;
* eval: resize the shorter side to 256, then center-crop 224;

The per-image transforms (:func:`train_transform`, :func:`eval_transform`) are plain
NumPy/Pillow functions, usable and testable without tensorflow-datasets or grain.
:func:`imagenet_batches` builds the stream with :mod:`tern_jax.data.pipeline` (seeded
global order, per-process shards, checkpointable iterator).

Format: grain needs random access, so the dataset must be prepared in ``array_record``
format (``tfds build imagenet2012 --file_format array_record``); this needs no TensorFlow at
training time. A dataset prepared in the default TFRecord format gets a clear error naming
the one-off conversion, ``tfds convert_format --dataset_version_dir <dir>
--out_file_format array_record`` (the conversion itself needs TensorFlow).

This file is longer than the project's ~350-line guide: ImageNet's source, its per-image
transforms and the two entry points (a grain dataset, a batch iterator) with their checks
are one data set's reader; the generic grain pipeline lives in ``pipeline.py``.
"""

from __future__ import annotations

import io
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from tern_jax.data.errors import DataNotFoundError
from tern_jax.data.pipeline import batch_dataset, batch_iterator

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_NUM_CLASSES",
    "IMAGENET_STD",
    "PREPARE_INSTRUCTIONS",
    "center_crop_box",
    "EvalTransform",
    "TrainTransform",
    "decode_image",
    "eval_transform",
    "imagenet_batches",
    "imagenet_dataset",
    "imagenet_source",
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
     (the input pipeline, grain, needs random access: array_record, read without
     tensorflow; a copy already prepared as TFRecord is converted once with
     tfds convert_format --dataset_version_dir <data_dir>/imagenet2012/<version>
       --out_file_format array_record)
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


class TrainTransform:
    """:func:`train_transform` as the pipeline's ``transform(image, rng)`` (picklable)."""

    def __init__(self, size: int = 224):
        self.size = size

    def __call__(self, image: Any, rng: np.random.Generator) -> np.ndarray:
        return train_transform(rng, image, size=self.size)


class EvalTransform:
    """:func:`eval_transform` as the pipeline's ``transform(image, rng)`` (``rng`` unused)."""

    def __init__(self, size: int = 224):
        self.size = size

    def __call__(self, image: Any, rng: np.random.Generator) -> np.ndarray:
        del rng
        return eval_transform(image, size=self.size, resize_size=round(self.size * 256 / 224))




# --------------------------------------------------------------------------------------
# Reading tfds imagenet2012
# --------------------------------------------------------------------------------------


def imagenet_source(split: str, data_dir: str | os.PathLike[str] | None = None) -> Any:
    """The random-access tfds data source of ``imagenet2012`` (images left JPEG-encoded).

    ``source[i]`` is ``{"image": <JPEG bytes>, "label": int}``; the source pickles into
    grain's worker processes.

    Raises:
        DataNotFoundError: tensorflow-datasets missing, or the dataset not prepared; the
            message says how to prepare it.
        ValueError: the dataset is prepared in a format without random access (TFRecord);
            the message names the conversion command.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataNotFoundError(
            "ImageNet is read through tensorflow-datasets, which is not installed "
            "(pip install tensorflow-datasets).\n" + PREPARE_INSTRUCTIONS
        ) from e
    builder = tfds.builder("imagenet2012", data_dir=None if data_dir is None else str(data_dir))
    if not builder.is_prepared():
        raise DataNotFoundError(
            f"tensorflow-datasets has no prepared 'imagenet2012' in {builder.data_dir}.\n"
            + PREPARE_INSTRUCTIONS)
    try:
        return builder.as_data_source(split=split,
                                      decoders={"image": tfds.decode.SkipDecoding()})
    except NotImplementedError as e:  # tfds: no random-access file format available
        raise ValueError(
            f"imagenet2012 in {builder.data_dir} is prepared as {builder.info.file_format}, "
            "which has no random access; the grain input pipeline reads array_record. "
            "Convert it once (the conversion needs tensorflow):\n"
            f"  tfds convert_format --dataset_version_dir {builder.data_dir} "
            "--out_file_format array_record") from e


def imagenet_dataset(
    split: str,
    batch_size: int,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    train: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
    start_epoch: int = 0,
    image_size: int = 224,
    dtype: Any = np.float32,
    drop_remainder: bool | None = None,
    pad_remainder: bool = False,
    shard_index: int | None = None,
    num_shards: int | None = None,
) -> Any:
    """This process's ImageNet batches as a grain ``MapDataset`` (element ``k``: step ``k``).

    The arguments are those of :func:`imagenet_batches`; see
    :func:`tern_jax.data.pipeline.batch_dataset` for the order and sharding.
    """
    if num_epochs is None and not train:
        num_epochs = 1
    if drop_remainder is None:
        drop_remainder = train and not pad_remainder
    source = imagenet_source(split, data_dir)
    transform = TrainTransform(image_size) if train else EvalTransform(image_size)
    return batch_dataset(
        source, batch_size, shuffle=train, seed=seed, num_epochs=num_epochs,
        start_epoch=start_epoch, transform=transform, dtype=dtype, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, drop_remainder=drop_remainder, pad_remainder=pad_remainder,
        shard_index=shard_index, num_shards=num_shards)


def imagenet_batches(
    split: str,
    batch_size: int,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    train: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
    start_epoch: int = 0,
    image_size: int = 224,
    dtype: Any = np.float32,
    num_workers: int | None = None,
    num_threads: int = 1,
    prefetch_batches: int = 2,
    drop_remainder: bool | None = None,
    pad_remainder: bool = False,
    shard_index: int | None = None,
    num_shards: int | None = None,
) -> Any:
    """Stream ImageNet batches ``(images, labels)`` from tfds ``imagenet2012`` with grain.

    Args:
        split: tfds split, e.g. ``"train"``, ``"validation"`` or ``"train[:1%]"``.
        batch_size: examples per batch of this process; the global batch over all
            processes is ``batch_size * num_shards``.
        data_dir: tensorflow-datasets data dir holding the prepared dataset.
        train: train transform + shuffling (else eval transform, fixed order).
        seed: seed of the shuffling and of the per-image augmentation; the stream is
            deterministic for a given seed, whatever the number of workers or processes.
        num_epochs: passes over the split; ``None`` means forever for ``train`` and once
            otherwise.
        start_epoch: the epoch the stream starts at (a run resumed at an epoch boundary).
        image_size: output side length (224; eval resizes the shorter side to
            ``image_size * 256 / 224`` first).
        dtype: ``np.float32`` (or another float dtype) for normalized images, or
            ``np.uint8`` for raw pixels (normalize on device, e.g. with
            :func:`tern_jax.data.augment.normalize` and :data:`IMAGENET_MEAN`/``STD``).
        num_workers: grain worker processes decoding and augmenting; ``0`` decodes in this
            process; default ``min(8, os.cpu_count())``.
        num_threads: threads per process, each building one batch at a time.
        prefetch_batches: batches kept ready per worker.
        drop_remainder: drop a final partial global batch; default ``train``.
        pad_remainder: pad the final batch instead and yield ``(images, labels, mask)``
            (what evaluation on several processes needs).
        shard_index, num_shards: this process's share of the data; default
            ``jax.process_index()`` / ``jax.process_count()``.

    Returns:
        A checkpointable ``grain.DatasetIterator`` (``get_state`` / ``set_state``) yielding
        ``images`` ``(B, image_size, image_size, 3)`` of ``dtype`` and ``labels`` ``(B,)``
        int32 (and the float32 ``mask`` with ``pad_remainder``).

    Raises:
        DataNotFoundError: tensorflow-datasets or the prepared dataset is missing; the
            message says how to prepare it.
        ValueError: the dataset is in TFRecord format (the message names the conversion),
            or bad batch / shard arguments.
    """
    dataset = imagenet_dataset(
        split, batch_size, data_dir=data_dir, train=train, seed=seed, num_epochs=num_epochs,
        start_epoch=start_epoch, image_size=image_size, dtype=dtype,
        drop_remainder=drop_remainder, pad_remainder=pad_remainder, shard_index=shard_index,
        num_shards=num_shards)
    return batch_iterator(dataset, num_workers=num_workers, num_threads=num_threads,
                          buffer_size=prefetch_batches)
