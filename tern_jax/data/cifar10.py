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
usual places) and tensorflow-datasets last. :func:`download_cifar10` fetches the folder,
only when called.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from tern_jax import fs
from tern_jax._args import check_int, check_optional_path, check_path
from tern_jax.data.arrays import ArrayDataset
from tern_jax.data.errors import DataNotFoundError

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_URL", "DataNotFoundError",
           "default_search_dirs", "download_cifar10", "find_cifar10_folder", "load_cifar10",
           "read_cifar_folder"]

#: Per-channel mean and std of the CIFAR-10 training pixels in [0, 1] units (the recipe of
#: the paper: (125.3, 123.0, 113.9) / 255 and (63.0, 62.1, 66.7) / 255).
CIFAR10_MEAN: tuple[float, float, float] = (125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0)
CIFAR10_STD: tuple[float, float, float] = (63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0)

CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck")

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


def default_search_dirs() -> list[Path]:
    """The usual places searched for a ``cifar-10-batches-py`` folder, in order."""
    home = Path.home()
    return [Path.cwd() / "data" / FOLDER_NAME, home / ".keras" / "datasets" / FOLDER_NAME,
            home / "data" / FOLDER_NAME, home / ".cache" / "tern_jax" / FOLDER_NAME]


def find_cifar10_folder(path: str | os.PathLike[str]) -> Path | None:
    """Resolve ``path`` to a CIFAR-10 batches folder, or ``None`` when there is none.

    ``path`` may be the ``cifar-10-batches-py`` folder itself (or any folder holding the
    batch files), or its parent.
    """
    p = check_path(path, "path", "find_cifar10_folder")
    if p.is_dir() and (p.name == FOLDER_NAME or any((p / name).exists()
                                                    for name in (*TRAIN_FILES, TEST_FILE))):
        return p
    return p / FOLDER_NAME if (p / FOLDER_NAME).is_dir() else None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch file as (images (n, 32, 32, 3) uint8, labels (n,) int32).

    Raises ``ValueError`` naming ``path`` when the file is missing, unreadable or malformed.
    """
    if not path.is_file():
        raise ValueError(f"incomplete CIFAR-10 folder: batch file {path} is missing")

    def corrupt(problem: str) -> ValueError:
        return ValueError(f"corrupt CIFAR-10 batch file {path}: {problem}")

    try:
        with open(path, "rb") as f:
            # latin1 keeps str keys of Python-2 pickles as str and decodes their NumPy arrays.
            entry = pickle.load(f, encoding="latin1")
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ... for a corrupt file
        raise corrupt(f"could not unpickle it ({type(e).__name__}: {e}); the file may be "
                      "truncated, re-download or re-extract cifar-10-python.tar.gz") from e
    if not isinstance(entry, dict):
        raise corrupt(f"expected a pickled dict, got {type(entry).__name__}")
    entry = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}
    for key in ("data", "labels"):
        if key not in entry:
            raise corrupt(f"no {key!r} entry (keys: {sorted(map(str, entry))})")
    try:
        data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"])
    except Exception as e:
        raise corrupt(f"unreadable arrays ({e})") from e
    if data.ndim != 2 or data.shape[1] != _ROW:
        raise corrupt(f"'data' has shape {data.shape}, expected (n, {_ROW}) (32x32x3 pixels "
                      "per row)")
    if data.dtype != np.uint8 and (not np.issubdtype(data.dtype, np.integer) or (
            data.size and (data.min() < 0 or data.max() > 255))):
        raise corrupt(f"'data' has dtype {data.dtype} and is not a uint8 array of pixels")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise corrupt(f"{data.shape[0]} images but labels of shape {labels.shape}")
    if data.shape[0] == 0:
        raise corrupt("the batch holds no images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise corrupt(f"labels have dtype {labels.dtype}, not integer")
    if labels.min() < 0 or labels.max() >= _NUM_CLASSES:
        raise corrupt(f"labels out of range 0..{_NUM_CLASSES - 1} (min {labels.min()}, max "
                      f"{labels.max()})")
    images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _arrays(train: tuple, test: tuple) -> ArrayDataset:
    return ArrayDataset(train_images=train[0], train_labels=train[1], test_images=test[0],
                        test_labels=test[1], num_classes=_NUM_CLASSES, mean=CIFAR10_MEAN,
                        std=CIFAR10_STD, name="cifar10")


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
    train = tuple(np.concatenate([p[k] for p in parts]) for k in (0, 1))
    test = _read_batch(folder / TEST_FILE)
    got = (len(train[1]), len(test[1]))
    if expected_counts is not None and got != expected_counts:
        raise ValueError(f"incomplete CIFAR-10 folder {folder}: {got[0]} train / {got[1]} test "
                         f"images, expected {expected_counts[0]} / {expected_counts[1]}")
    return _arrays(train, test)


def download_cifar10(root: str | os.PathLike[str] | None = None, *, url: str = CIFAR10_URL,
                     md5: str | None = CIFAR10_MD5) -> Path:
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
                if name.is_absolute() or ".." in name.parts or not (member.isfile()
                                                                    or member.isdir()):
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


def _tfds_cifar10(data_dir: str | os.PathLike[str] | None) -> ArrayDataset:
    """The prepared tfds ``cifar10`` as arrays: random access when prepared as array_record
    (no TensorFlow needed), else ``tf.data``.

    Raises ``ImportError`` without tensorflow-datasets, :class:`DataNotFoundError` when
    ``cifar10`` is not prepared, ``RuntimeError`` for TFRecord data without TensorFlow.
    """
    import tensorflow_datasets as tfds  # lazy: heavy, optional

    with fs.quiet_libraries():  # tfds logs through absl while probing; errors are raised
        builder = tfds.builder("cifar10", data_dir=None if data_dir is None else str(data_dir))
        splits = {}
        try:
            for split in ("train", "test"):
                source = builder.as_data_source(split=split)
                examples = [source[i] for i in range(len(source))]
                splits[split] = (np.stack([np.asarray(ex["image"], np.uint8) for ex in examples]),
                                 np.asarray([ex["label"] for ex in examples], np.int32))
        except Exception as e:
            if not builder.is_prepared():
                raise DataNotFoundError(f"tensorflow-datasets has no prepared 'cifar10' in "
                                        f"{builder.data_dir}") from e
            try:
                import tensorflow  # noqa: F401
            except ImportError:
                raise RuntimeError(
                    f"tensorflow-datasets' cifar10 in {builder.data_dir} is prepared in "
                    f"{builder.info.file_format} format, which can only be read with TensorFlow "
                    "(not installed).  Install tensorflow, re-prepare it without TensorFlow-only "
                    "formats (`tfds build cifar10 --file_format=array_record`), or use a "
                    f"{FOLDER_NAME} folder instead.") from e
            for split in ("train", "test"):
                ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
                images, labels = tfds.as_numpy(ds)
                splits[split] = (np.asarray(images, np.uint8), np.asarray(labels, np.int32))
    return _arrays(splits["train"], splits["test"])


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
        "or the folder holding it; on the command line: --set data.data_dir=/path/to/it), or put "
        "it in ./data, ~/.keras/datasets, ~/data or ~/.cache/tern_jax;\n"
        f"  * set the environment variable {ENV_VAR}=/path/to/it;\n"
        "  * or call tern_jax.data.download_cifar10() (fetches it into ~/.cache/tern_jax);\n"
        "  * or install tensorflow-datasets (pip install tensorflow-datasets) and prepare "
        "'cifar10' (`tfds build cifar10`; preparing needs tensorflow)."
    )


def load_cifar10(data_dir: str | os.PathLike[str] | None = None,
                 source: str = "auto") -> ArrayDataset:
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
            raise DataNotFoundError("source='tfds' needs tensorflow-datasets: pip install "
                                    "tensorflow-datasets\n" + _how_to_provide()) from e
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

    raise DataNotFoundError("CIFAR-10 not found. Looked in:\n" + "\n".join(looked) + "\n"
                            + _how_to_provide())
