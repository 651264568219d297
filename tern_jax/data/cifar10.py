"""CIFAR-10 as in-memory NumPy arrays.

Two sources are supported:

* ``"folder"``: the ``cifar-10-batches-py`` folder that torchvision and Keras download
  (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``; pickled dicts
  whose ``data`` entry is a ``(10000, 3072)`` uint8 array, each row the red, green and blue
  32x32 planes).  Needs nothing but NumPy.
* ``"tfds"``: the ``cifar10`` dataset of tensorflow-datasets, already prepared.  Read
  through ``tfds`` random-access data sources when it was prepared in ``array_record``
  format (works without TensorFlow), else through ``tf.data`` (needs TensorFlow).

``"auto"`` tries the folder first (``data_dir``, then ``$TERN_JAX_DATA_DIR``, then a few
usual places) and tensorflow-datasets last.

This file is longer than the project's ~350-line guide: it holds every way CIFAR-10 arrives
(a batches folder, TFDS, an explicit download, writing a folder for tests) with the checks
each needs; they share the folder format and its error messages.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tern_jax import fs
from tern_jax._args import check_bool, check_int, check_optional_path, check_path
from tern_jax.data.arrays import ArrayDataset
from tern_jax.data.errors import DataNotFoundError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DataNotFoundError",
    "default_search_dirs",
    "download_cifar10",
    "find_cifar10_folder",
    "load_cifar10",
    "read_cifar_folder",
    "write_cifar_batches",
]

#: Per-channel mean and std of the CIFAR-10 training pixels in [0, 1] units (the recipe of
#: the paper: (125.3, 123.0, 113.9) / 255 and (63.0, 62.1, 66.7) / 255).
CIFAR10_MEAN: tuple[float, float, float] = (125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0)
CIFAR10_STD: tuple[float, float, float] = (63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: Official download of the Python-pickle version, and the MD5 of that archive.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

ENV_VAR = "TERN_JAX_DATA_DIR"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
_NUM_CLASSES = 10
_ROW = 32 * 32 * 3



# --------------------------------------------------------------------------------------
# Locating the folder
# --------------------------------------------------------------------------------------


def default_search_dirs() -> list[Path]:
    """The usual places searched for a ``cifar-10-batches-py`` folder, in order."""
    home = Path.home()
    return [
        Path.cwd() / "data" / FOLDER_NAME,
        home / ".keras" / "datasets" / FOLDER_NAME,
        home / "data" / FOLDER_NAME,
        home / ".cache" / "tern_jax" / FOLDER_NAME,
    ]


def _looks_like_batches_folder(path: Path) -> bool:
    """True when ``path`` is a directory meant to be a CIFAR-10 batches folder."""
    if not path.is_dir():
        return False
    if path.name == FOLDER_NAME:
        return True
    return any((path / name).exists() for name in (*TRAIN_FILES, TEST_FILE))


def find_cifar10_folder(path: str | os.PathLike[str]) -> Path | None:
    """Resolve ``path`` to a CIFAR-10 batches folder, or ``None`` when there is none.

    ``path`` may be the ``cifar-10-batches-py`` folder itself (or any folder holding the
    batch files), or its parent.
    """
    p = check_path(path, "path", "find_cifar10_folder")
    if _looks_like_batches_folder(p):
        return p
    child = p / FOLDER_NAME
    if child.is_dir():
        return child
    return None


# --------------------------------------------------------------------------------------
# Reading and writing the pickled batches
# --------------------------------------------------------------------------------------


def _str_keys(d: dict[Any, Any]) -> dict[str, Any]:
    """Copy of ``d`` with bytes keys decoded (the original pickles came from Python 2)."""
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _read_batch(path: Path, *, check_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch file; returns (images (n, 32, 32, 3) uint8, labels (n,) int32).

    Raises:
        ValueError: naming ``path`` when the file is missing, unreadable or malformed.
    """
    if not path.is_file():
        raise ValueError(f"incomplete CIFAR-10 folder: batch file {path} is missing")
    try:
        with open(path, "rb") as f:
            # latin1 keeps str keys of Python-2 pickles as str and decodes their NumPy arrays.
            entry = pickle.load(f, encoding="latin1")
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ... for a corrupt file
        raise ValueError(
            f"corrupt CIFAR-10 batch file {path}: could not unpickle it "
            f"({type(e).__name__}: {e}); the file may be truncated, re-download or re-extract "
            "cifar-10-python.tar.gz"
        ) from e
    if not isinstance(entry, dict):
        raise ValueError(
            f"corrupt CIFAR-10 batch file {path}: expected a pickled dict, "
            f"got {type(entry).__name__}"
        )
    entry = _str_keys(entry)
    for key in ("data", "labels"):
        if key not in entry:
            raise ValueError(
                f"corrupt CIFAR-10 batch file {path}: no {key!r} entry "
                f"(keys: {sorted(map(str, entry))})"
            )
    try:
        data = np.asarray(entry["data"])
        labels = np.asarray(entry["labels"])
    except Exception as e:
        raise ValueError(f"corrupt CIFAR-10 batch file {path}: unreadable arrays ({e})") from e
    if data.ndim != 2 or data.shape[1] != _ROW:
        raise ValueError(
            f"corrupt CIFAR-10 batch file {path}: 'data' has shape {data.shape}, "
            f"expected (n, {_ROW}) (32x32x3 pixels per row)"
        )
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or (
            data.size and (data.min() < 0 or data.max() > 255)
        ):
            raise ValueError(
                f"corrupt CIFAR-10 batch file {path}: 'data' has dtype {data.dtype} "
                "and is not a uint8 array of pixels"
            )
        data = data.astype(np.uint8)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"corrupt CIFAR-10 batch file {path}: {data.shape[0]} images but "
            f"labels of shape {labels.shape}"
        )
    if data.shape[0] == 0:
        raise ValueError(f"corrupt CIFAR-10 batch file {path}: the batch holds no images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"corrupt CIFAR-10 batch file {path}: labels have dtype {labels.dtype}, not integer"
        )
    if check_labels and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise ValueError(
            f"corrupt CIFAR-10 batch file {path}: labels out of range 0..{_NUM_CLASSES - 1} "
            f"(min {labels.min()}, max {labels.max()})"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def read_cifar_folder(
    folder: str | os.PathLike[str],
    *,
    expected_counts: tuple[int, int] | None = None,
) -> ArrayDataset:
    """Read a ``cifar-10-batches-py`` folder into an :class:`ArrayDataset`.

    Args:
        folder: the batches folder itself (not its parent).
        expected_counts: ``(n_train, n_test)`` to insist on, e.g. ``(50000, 10000)``;
            ``None`` accepts any non-empty counts (tests use tiny folders).

    Raises:
        DataNotFoundError: ``folder`` does not exist.
        ValueError: naming the offending file, when a batch file is missing, truncated,
            unpicklable, of the wrong size, or holds labels outside ``0..9``.
    """
    folder = check_path(folder, "folder", "read_cifar_folder")
    if expected_counts is not None:
        if not (isinstance(expected_counts, (tuple, list)) and len(expected_counts) == 2):
            raise TypeError(f"read_cifar_folder: expected_counts must be (n_train, n_test) or "
                            f"None, got {expected_counts!r}")
        expected_counts = tuple(check_int(c, f"expected_counts[{i}]", "read_cifar_folder",
                                          minimum=1) for i, c in enumerate(expected_counts))
    if not folder.exists():
        raise DataNotFoundError(f"read_cifar_folder: the CIFAR-10 folder {folder} does not "
                                "exist\n" + _how_to_provide())
    if not folder.is_dir():
        raise ValueError(f"read_cifar_folder: folder must be a cifar-10-batches-py folder, but "
                         f"{folder} is a file")
    parts = [_read_batch(folder / name) for name in TRAIN_FILES]
    test_images, test_labels = _read_batch(folder / TEST_FILE)
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    if expected_counts is not None:
        got = (train_images.shape[0], test_images.shape[0])
        if got != tuple(expected_counts):
            raise ValueError(
                f"incomplete CIFAR-10 folder {folder}: {got[0]} train / {got[1]} test images, "
                f"expected {expected_counts[0]} / {expected_counts[1]}"
            )
    return ArrayDataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=_NUM_CLASSES,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        name="cifar10",
    )


def _pickled(entry: dict[str, Any], bytes_keys: bool) -> bytes:
    if bytes_keys:
        entry = {k.encode("ascii"): v for k, v in entry.items()}
    return pickle.dumps(entry, protocol=2)


def write_cifar_batches(
    folder: str | os.PathLike[str],
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    per_batch: int | None = None,
    bytes_keys: bool = False,
) -> Path:
    """Write ``images``/``labels`` as a ``cifar-10-batches-py`` folder (mainly for tests).

    The images are laid out like the original 60,000: the first ``5 * per_batch`` go to
    ``data_batch_1`` .. ``data_batch_5`` (``per_batch`` each, in order) and all the rest to
    ``test_batch``; ``batches.meta`` is written too.  Reading the folder back therefore
    gives ``train = images[:5 * per_batch]`` and ``test = images[5 * per_batch:]``.

    Args:
        folder: the batches folder to create (e.g. ``tmp / "cifar-10-batches-py"``).
        images: ``(N, 32, 32, 3)`` uint8, NHWC.
        labels: ``(N,)`` integers.
        per_batch: images per training batch; default ``N // 6`` (like 10,000 of 60,000).
        bytes_keys: write ``b"data"``/``b"labels"`` keys, like the original Python-2 pickles
            read with ``encoding="bytes"``, instead of str keys.

    Returns:
        The folder written.

    Raises:
        TypeError/ValueError naming the argument (images not uint8-range integers of shape
        ``(N, 32, 32, 3)``, labels not integers in ``0..9``, a bad ``per_batch``);
        :class:`tern_jax.fs.NotOwnedError` when the folder already holds a batch file this
        function did not write (nothing is written then).
    """
    func = "write_cifar_batches"
    out = check_path(folder, "folder", func)
    bytes_keys = check_bool(bytes_keys, "bytes_keys", func)
    if not (hasattr(images, "shape") and hasattr(images, "dtype")):
        images = np.asarray(images)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"{func}: images must have shape (N, 32, 32, 3), got {images.shape}")
    if not np.issubdtype(images.dtype, np.integer):
        raise TypeError(f"{func}: images must be uint8 pixels (integers in 0..255), got dtype "
                        f"{images.dtype}")
    if images.size and (images.min() < 0 or images.max() > 255):
        raise ValueError(f"{func}: images must be pixels in 0..255, got values in "
                         f"[{images.min()}, {images.max()}]")
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{func}: labels must have shape ({images.shape[0]},), got "
                         f"{labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{func}: labels must be integer classes in 0..9, got dtype "
                        f"{labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise ValueError(f"{func}: labels must be classes in 0..{_NUM_CLASSES - 1}, got values "
                         f"in [{labels.min()}, {labels.max()}]")
    n = images.shape[0]
    per_batch = n // 6 if per_batch is None else check_int(per_batch, "per_batch", func)
    if per_batch < 1 or 5 * per_batch >= n:
        raise ValueError(
            f"{func}: need 1 <= per_batch and 5 * per_batch < N (some test images); got "
            f"per_batch={per_batch}, N={n}"
        )
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{func}: folder {out} is a file; give a folder to create")
    for name in (*TRAIN_FILES, TEST_FILE, META_FILE):
        fs.check_replaceable(out / name, fs.owned_file, "a CIFAR-10 batch (write_cifar_batches)")
    out.mkdir(parents=True, exist_ok=True)
    rows = np.ascontiguousarray(images.astype(np.uint8).transpose(0, 3, 1, 2).reshape(n, _ROW))

    def entry(lo: int, hi: int, batch_label: str) -> dict[str, Any]:
        return {
            "batch_label": batch_label,
            "labels": [int(v) for v in labels[lo:hi]],
            "data": rows[lo:hi],
            "filenames": [f"image_{i:05d}.png" for i in range(lo, hi)],
        }

    what = "a CIFAR-10 batch (write_cifar_batches)"
    for b, name in enumerate(TRAIN_FILES):
        lo, hi = b * per_batch, (b + 1) * per_batch
        fs.write_owned_bytes(out / name, _pickled(
            entry(lo, hi, f"training batch {b + 1} of 5"), bytes_keys), what=what)
    fs.write_owned_bytes(out / TEST_FILE, _pickled(
        entry(5 * per_batch, n, "testing batch 1 of 1"), bytes_keys), what=what)
    meta = {
        "label_names": list(CIFAR10_CLASSES),
        "num_cases_per_batch": per_batch,
        "num_vis": _ROW,
    }
    fs.write_owned_bytes(out / META_FILE, _pickled(meta, bytes_keys), what=what)
    return out


# --------------------------------------------------------------------------------------
# Download (explicit only; never triggered implicitly)
# --------------------------------------------------------------------------------------


def download_cifar10(
    root: str | os.PathLike[str] | None = None,
    *,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
) -> Path:
    """Download ``cifar-10-python.tar.gz`` (about 163 MB) and extract it under ``root``.

    Args:
        root: where ``cifar-10-batches-py`` is created; default ``~/.cache/tern_jax``
            (one of the places :func:`load_cifar10` searches).
        url: where to fetch the archive from.
        md5: expected MD5 of the archive; ``None`` skips the check.

    Returns:
        The extracted ``cifar-10-batches-py`` folder.  Does nothing when it already exists.

    Raises:
        TypeError: ``root`` is not a path, ``url`` not a str or ``md5`` not a str/None.
        FileExistsError: ``root/cifar-10-batches-py`` exists but is incomplete (it is left as
            it is; move it away and download again).
    """
    func = "download_cifar10"
    root_dir = check_optional_path(root, "root", func) or Path.home() / ".cache/tern_jax"
    if not isinstance(url, str) or not url:
        raise TypeError(f"{func}: url must be a non-empty str, got {type(url).__name__} {url!r}")
    if md5 is not None and not (isinstance(md5, str) and len(md5) == 32):
        raise TypeError(f"{func}: md5 must be a 32-character hex str or None, got {md5!r}")
    target = root_dir / FOLDER_NAME
    if (target / TEST_FILE).is_file():
        return target
    if target.exists():
        raise FileExistsError(f"{func}: {target} exists but holds no {TEST_FILE}; it is left "
                              "untouched. Move it away (or complete it) and download again")
    root_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root_dir) as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        with urllib.request.urlopen(url) as response, open(archive, "wb") as f:
            shutil.copyfileobj(response, f)
        got = fs.file_digest(archive, "md5")
        if md5 is not None and got != md5:
            raise ValueError(f"downloaded {url} has MD5 {got}, expected {md5}")
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if (
                    name.is_absolute()
                    or ".." in name.parts
                    or not (member.isfile() or member.isdir())
                ):
                    raise ValueError(f"refusing to extract suspicious member {member.name!r}")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and recent patch releases
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)  # members were checked above
        extracted = Path(tmp) / FOLDER_NAME
        if not extracted.is_dir():
            raise ValueError(f"{url} does not contain a {FOLDER_NAME} folder")
        shutil.move(str(extracted), str(target))
    return target


# --------------------------------------------------------------------------------------
# tensorflow-datasets
# --------------------------------------------------------------------------------------


def _tfds_cifar10(data_dir: str | os.PathLike[str] | None) -> ArrayDataset:
    """Load the prepared tfds ``cifar10`` into arrays.

    Raises:
        ImportError: tensorflow-datasets is not installed.
        DataNotFoundError: ``cifar10`` is not prepared in the tfds data dir.
        RuntimeError: it is prepared in TFRecord format and TensorFlow is missing.
    """
    import tensorflow_datasets as tfds  # lazy: heavy, optional

    # tfds logs through absl while probing a folder; what matters is raised below
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return _tfds_read(tfds, data_dir)
    finally:
        absl_logger.setLevel(level)


def _tfds_read(tfds, data_dir) -> ArrayDataset:
    builder = tfds.builder("cifar10", data_dir=None if data_dir is None else str(data_dir))
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        # Random access (array_record / parquet): needs no TensorFlow.
        for split in ("train", "test"):
            source = builder.as_data_source(split=split)
            n = len(source)
            images = np.empty((n, 32, 32, 3), np.uint8)
            labels = np.empty((n,), np.int32)
            for i in range(n):
                ex = source[i]
                images[i] = ex["image"]
                labels[i] = ex["label"]
            splits[split] = (images, labels)
    except Exception as e:
        if not builder.is_prepared():
            raise DataNotFoundError(
                f"tensorflow-datasets has no prepared 'cifar10' in {builder.data_dir}"
            ) from e
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            raise RuntimeError(
                f"tensorflow-datasets' cifar10 in {builder.data_dir} is prepared in "
                f"{builder.info.file_format} format, which can only be read with TensorFlow "
                "(not installed).  Install tensorflow, re-prepare it without TensorFlow-only "
                "formats (`tfds build cifar10 --file_format=array_record`), or use a "
                f"{FOLDER_NAME} folder instead."
            ) from e
        for split in ("train", "test"):
            ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
            images, labels = tfds.as_numpy(ds)
            splits[split] = (np.asarray(images, np.uint8), np.asarray(labels, np.int32))
    return ArrayDataset(
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        num_classes=_NUM_CLASSES,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        name="cifar10",
    )


# --------------------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------------------


def _what_is_there(path: Path) -> str:
    """Why ``path`` holds no CIFAR-10 batches, in a few words."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is a file, not a folder"
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return "is empty"
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return (f"holds no {FOLDER_NAME}/ nor data_batch_1..5/test_batch files (it has: {shown})")


def _how_to_provide() -> str:
    return (
        "To provide CIFAR-10, do one of:\n"
        f"  * download {CIFAR10_URL} and extract it (tar xzf cifar-10-python.tar.gz), which "
        f"creates {FOLDER_NAME}/; then pass data_dir=/path/to/it (the {FOLDER_NAME} folder "
        "or the folder holding it; on the command line: --set data_dir=/path/to/it), or put "
        "it in ./data, ~/.keras/datasets, ~/data or ~/.cache/tern_jax;\n"
        f"  * set the environment variable {ENV_VAR}=/path/to/it;\n"
        "  * or call tern_jax.data.download_cifar10() (fetches it into ~/.cache/tern_jax);\n"
        "  * or install tensorflow-datasets (pip install tensorflow-datasets) and prepare "
        "'cifar10' (`tfds build cifar10`; preparing needs tensorflow)."
    )


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    source: str = "auto",
) -> ArrayDataset:
    """Load CIFAR-10 (50,000 train / 10,000 test 32x32 RGB images, 10 classes).

    Args:
        data_dir: for ``"folder"``/``"auto"``, the ``cifar-10-batches-py`` folder or its
            parent; for ``"tfds"``, the tensorflow-datasets data dir (``None``: tfds default).
        source: ``"folder"``, ``"tfds"`` or ``"auto"``.  ``"auto"`` uses ``data_dir`` when
            given (a batches folder there, else a tfds dataset prepared there), else
            ``$TERN_JAX_DATA_DIR``, else the first of :func:`default_search_dirs` that
            exists, else tensorflow-datasets when installed and ``cifar10`` is prepared.

    Returns:
        An :class:`ArrayDataset` with uint8 NHWC images, int32 labels and the paper's
        normalization constants :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`.

    Raises:
        DataNotFoundError: no data anywhere; the message lists where it looked and how to
            provide the data.
        ValueError: a folder was found but is incomplete or corrupt (names the file); or an
            unknown ``source``.
        RuntimeError: tfds data exists only in a format that needs TensorFlow.
    """
    data_dir = check_optional_path(data_dir, "data_dir", "load_cifar10")
    if source not in ("auto", "folder", "tfds"):
        raise ValueError(f"load_cifar10: source must be 'auto', 'folder' or 'tfds', got "
                         f"{source!r} (unknown CIFAR-10 source)")

    if source == "tfds":
        try:
            return _tfds_cifar10(data_dir)
        except ImportError as e:
            raise DataNotFoundError(
                "source='tfds' needs tensorflow-datasets: pip install tensorflow-datasets\n"
                + _how_to_provide()
            ) from e
        except DataNotFoundError as e:
            raise DataNotFoundError(f"{e}\n{_how_to_provide()}") from e

    looked: list[str] = []
    candidates: list[tuple[Path, str]] = []
    if data_dir is not None:
        # An explicit location is authoritative: no silent fall-back to other places.
        candidates.append((Path(data_dir).expanduser(), "data_dir"))
    else:
        env = os.environ.get(ENV_VAR)
        if env:
            candidates.append((Path(env).expanduser(), f"${ENV_VAR}"))
        candidates.extend((p, "usual place") for p in default_search_dirs())

    for path, why in candidates:
        folder = find_cifar10_folder(path)
        if folder is not None:
            return read_cifar_folder(folder)
        looked.append(f"  - {path} ({why}): {_what_is_there(path)}")

    if source == "auto":
        try:
            return _tfds_cifar10(data_dir)
        except ImportError:
            looked.append("  - tensorflow-datasets: not installed")
        except (DataNotFoundError, RuntimeError) as e:
            looked.append(f"  - tensorflow-datasets: {e}")

    raise DataNotFoundError(
        "CIFAR-10 not found. Looked in:\n" + "\n".join(looked) + "\n" + _how_to_provide()
    )
