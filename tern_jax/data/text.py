"""Byte-level text corpora (256 symbols) for language modelling, and batches of windows.

Three sources, one result (:class:`TextDataset`: the train and validation bytes as uint8):

* ``"python_stdlib"`` (the offline default, on every machine with Python): the standard
  library's own ``.py`` files (the folder of ``os.py``, without ``site-packages``), split **by
  file**: a file goes to validation when ``crc32(its path relative to the library) % 10 == 0``
  (about 10% of the files; the same file always lands in the same split), else to train. Each
  split is then filled with whole files in ``crc32`` order up to ``max_train_bytes`` (8 MiB) and
  ``max_validation_bytes`` (1 MiB) of the ~31 MB library, so loading stays under a second. The
  exact files depend on the Python version; :attr:`TextDataset.description` states the counts.
* ``"tiny_shakespeare"``: TFDS's copy of Karpathy's tiny Shakespeare (its ``train`` and
  ``validation`` splits), when ``tensorflow_datasets`` has it prepared (or can download it).
* a local path (``text_path``): one text file, split by position (the last 10% of its bytes
  for validation), or a folder, whose text files are split by file as the standard library is
  (when that leaves a split empty, e.g. fewer than ten files, the concatenation is split by
  position instead); hidden files and binary files (holding a NUL byte) in a folder are
  skipped.

Loaded corpora are cached in memory (read-only arrays), so several runs in one process read the
disk once.
"""

from __future__ import annotations

import os
import sysconfig
import zlib
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "TEXT_SOURCES",
    "TextDataset",
    "load_text",
    "python_stdlib_dir",
    "check_tokens",
    "eval_windows",
]

#: Names accepted by :func:`load_text` (besides a ``text_path``).
TEXT_SOURCES = ("python_stdlib", "tiny_shakespeare")

VOCAB_SIZE = 256
MAX_TRAIN_BYTES = 8 * 2**20
MAX_VALIDATION_BYTES = 2**20
_VALIDATION_FRACTION = 0.1
_CACHE: dict[tuple, TextDataset] = {}


class TextDataset(NamedTuple):
    """A byte-level corpus split into train and validation.

    Attributes:
      train: uint8 bytes (read-only).
      validation: uint8 bytes (read-only).
      name: ``"python_stdlib"``, ``"tiny_shakespeare"`` or the local path.
      description: where the bytes came from and how they were split (counts of files and
        bytes), for results files.
    """

    train: np.ndarray
    validation: np.ndarray
    name: str
    description: str

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE


def python_stdlib_dir() -> Path:
    """The folder of the running Python's standard library (where ``os.py`` lives)."""
    return Path(sysconfig.get_paths().get("stdlib") or os.path.dirname(os.__file__))


def _is_binary(head: bytes) -> bool:
    # git's rule: a NUL byte in the first 8000 bytes means binary
    return b"\x00" in head[:8000]


def _crc(relative: str) -> int:
    return zlib.crc32(relative.encode("utf-8"))


def _frozen(data: bytes | np.ndarray) -> np.ndarray:
    array = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    array = np.array(array, np.uint8)
    array.setflags(write=False)
    return array


def _split_files(files: list[tuple[str, Path]], max_train: int | None,
                 max_validation: int | None):
    """Whole files into train/validation by ``crc32(path) % 10``, each capped in crc order."""
    order = sorted(files, key=lambda item: (_crc(item[0]), item[0]))
    parts = {"train": [], "validation": []}
    sizes = {"train": 0, "validation": 0}
    caps = {"train": max_train, "validation": max_validation}
    for relative, path in order:
        split = "validation" if _crc(relative) % 10 == 0 else "train"
        cap = caps[split]
        if cap is not None and sizes[split] >= cap:
            continue
        data = path.read_bytes()
        if cap is not None and sizes[split] + len(data) > cap:
            continue  # a whole file or none; a later, smaller file may still fit
        parts[split].append(data)
        sizes[split] += len(data)
    return parts


def _stdlib(max_train, max_validation) -> TextDataset:
    root = python_stdlib_dir()
    files = [(p.relative_to(root).as_posix(), p) for p in root.rglob("*.py")
             if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)
             and p.is_file()]
    if not files:
        raise FileNotFoundError(f"no .py files under the standard library folder {root}; pass "
                                "text_path= with a text file or folder instead")
    parts = _split_files(files, max_train, max_validation)
    train, validation = b"".join(parts["train"]), b"".join(parts["validation"])
    description = (
        f"Python {'.'.join(map(str, __import__('sys').version_info[:3]))} standard library "
        f"({root}), {len(files)} .py files split by file (crc32(path) % 10 == 0: validation): "
        f"train {len(parts['train'])} files {len(train):,} bytes, validation "
        f"{len(parts['validation'])} files {len(validation):,} bytes (capped at "
        f"{max_train} / {max_validation} bytes)"
    )
    return TextDataset(_frozen(train), _frozen(validation), "python_stdlib", description)


def _tiny_shakespeare(data_dir) -> TextDataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise FileNotFoundError(
            "tiny_shakespeare needs tensorflow_datasets (pip install tensorflow-datasets); use "
            "dataset 'python_stdlib' or text_path= for a local file") from e
    try:  # a data source reads TFDS without TensorFlow (array_record files)
        sources = tfds.data_source("tiny_shakespeare", split=["train", "validation"],
                                   data_dir=data_dir,
                                   builder_kwargs={"file_format": "array_record"})
        splits = {name: b"".join(bytes(example["text"]) for example in source)
                  for name, source in zip(("train", "validation"), sources)}
    except Exception as e:  # TFDS raises many types when offline or without TensorFlow
        missing = _missing_module(e)
        if missing is not None:
            raise FileNotFoundError(
                f"tiny_shakespeare needs the Python module {missing!r}, which tensorflow_datasets "
                f"imports and which is not installed: pip install {missing.replace('_', '-')}; "
                "or use dataset 'python_stdlib' or text_path= for a local file") from None
        raise FileNotFoundError(
            f"tiny_shakespeare is not available here ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it needs a download (or a data_dir "
            "holding it prepared). Offline, use the default 'python_stdlib' or text_path= "
            "with a local copy of the text") from None
    return TextDataset(_frozen(splits["train"]), _frozen(splits["validation"]),
                       "tiny_shakespeare",
                       f"TFDS tiny_shakespeare: train {len(splits['train']):,} bytes, validation "
                       f"{len(splits['validation']):,} bytes")


def _missing_module(error: BaseException) -> str | None:
    """The top-level name of a module whose import failed somewhere in ``error``'s chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ImportError) and getattr(error, "name", None):
            return error.name.split(".")[0]
        error = error.__cause__ or error.__context__
    return None


def _by_position(data: bytes) -> tuple[bytes, bytes]:
    cut = int(len(data) * (1 - _VALIDATION_FRACTION))
    return data[:cut], data[cut:]


def _local(path: Path) -> TextDataset:
    if not path.exists():
        raise FileNotFoundError(f"text_path {str(path)!r} does not exist; give a text file or a "
                                "folder of text files")
    if path.is_file():
        data = path.read_bytes()
        if not data:
            raise ValueError(f"text_path {str(path)!r} is empty; give a file holding text")
        if _is_binary(data):
            raise ValueError(f"text_path {str(path)!r} is not text (it holds NUL bytes: a binary "
                             "file); give a plain text file or a folder of them")
        train, validation = _by_position(data)
        description = (f"{path}: one file of {len(data):,} bytes split by position: train "
                       f"{len(train):,} bytes, validation (last 10%) {len(validation):,} bytes")
    elif path.is_dir():
        files, skipped = [], 0
        for p in sorted(path.rglob("*")):
            relative = p.relative_to(path)
            if not p.is_file() or any(part.startswith(".") for part in relative.parts):
                continue
            with open(p, "rb") as f:
                head = f.read(8000)
            if not head or _is_binary(head):
                skipped += 1
                continue
            files.append((relative.as_posix(), p))
        if not files:
            raise ValueError(f"text_path {str(path)!r} holds no non-empty text files ({skipped} "
                             "binary or empty files skipped); give a folder of text files")
        parts = _split_files(files, None, None)
        if parts["train"] and parts["validation"]:
            train, validation = b"".join(parts["train"]), b"".join(parts["validation"])
            how = (f"split by file (crc32(path) % 10 == 0: validation): train "
                   f"{len(parts['train'])} files, validation {len(parts['validation'])} files")
        else:
            train, validation = _by_position(b"".join(p.read_bytes() for _, p in files))
            how = "too few files to split by file: the concatenation split by position"
        description = (f"{path}: {len(files)} text files ({skipped} binary/empty skipped), {how}; "
                       f"train {len(train):,} bytes, validation {len(validation):,} bytes")
    else:
        raise ValueError(f"text_path {str(path)!r} is neither a file nor a folder")
    return TextDataset(_frozen(train), _frozen(validation), str(path), description)


def load_text(name: str = "python_stdlib", *, text_path: str | os.PathLike | None = None,
              data_dir: str | None = None, max_train_bytes: int | None = MAX_TRAIN_BYTES,
              max_validation_bytes: int | None = MAX_VALIDATION_BYTES) -> TextDataset:
    """Loads (once per process) a byte-level corpus; see the module docstring for the splits.

    Args:
      name: ``"python_stdlib"`` or ``"tiny_shakespeare"``; ignored when ``text_path`` is given.
      text_path: a local text file or folder of text files.
      data_dir: where TFDS keeps ``tiny_shakespeare``.
      max_train_bytes, max_validation_bytes: caps of the standard library's splits (whole
        files, in crc32 order); ``None`` for no cap.

    Raises ``FileNotFoundError`` for a missing path or an unavailable TFDS dataset, and
    ``ValueError`` for an unknown name, an empty text, a binary file, or a split shorter than
    2 bytes.
    """
    for arg, value in (("max_train_bytes", max_train_bytes),
                       ("max_validation_bytes", max_validation_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 2):
            raise ValueError(f"{arg} must be an integer >= 2 or None, got {value!r}")
    if text_path is not None:
        if not isinstance(text_path, (str, os.PathLike)) or not str(text_path):
            raise TypeError(f"text_path must be a path to a text file or folder, got "
                            f"{text_path!r}")
        key = ("path", str(Path(text_path).expanduser().resolve()))
    elif name in TEXT_SOURCES:
        key = (name, data_dir, max_train_bytes, max_validation_bytes)
    else:
        raise ValueError(f"unknown text dataset {name!r}; choose one of {', '.join(TEXT_SOURCES)}"
                         " or give text_path= (a file or folder)")
    if key in _CACHE:
        return _CACHE[key]
    if text_path is not None:
        dataset = _local(Path(text_path).expanduser())
    elif name == "python_stdlib":
        dataset = _stdlib(max_train_bytes, max_validation_bytes)
    else:
        dataset = _tiny_shakespeare(data_dir)
    for split in ("train", "validation"):
        if getattr(dataset, split).size < 2:
            raise ValueError(f"{dataset.name}: the {split} split holds "
                             f"{getattr(dataset, split).size} bytes; a language model needs at "
                             "least 2 (an input and its next byte). Give more text")
    _CACHE[key] = dataset
    return dataset


def check_tokens(data, what: str, vocab_size: int = VOCAB_SIZE) -> None:
    """Integer tokens in ``[0, vocab_size)`` (the 256 bytes by default); their values only when
    known (not under ``jit``)."""
    kind = "byte tokens" if vocab_size == VOCAB_SIZE else "tokens"
    if not jnp.issubdtype(data.dtype, jnp.integer):
        raise TypeError(f"{what} must hold integer {kind} (e.g. uint8), got dtype "
                        f"{data.dtype}")
    if isinstance(data, jax.core.Tracer) or data.size == 0:
        return
    low, high = int(data.min()), int(data.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{what} must hold {kind} in [0, {vocab_size}), got values in "
                         f"[{low}, {high}]; a token outside the vocabulary has no embedding "
                         "(NaN logits, or a negative one wraps round)")


def _check_length(data_size: int, length: int, what: str) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"sequence length must be a positive integer, got {length!r}")
    if data_size < length + 1:
        raise ValueError(f"the {what} holds {data_size} bytes, fewer than one window of "
                         f"length {length} + 1 (inputs and their next bytes); use a shorter "
                         "sequence length or more text")


def eval_windows(data: np.ndarray, length: int, max_windows: int | None = None, *,
                 vocab_size: int = VOCAB_SIZE, check: bool = True) -> np.ndarray:
    """Non-overlapping windows of ``length + 1`` tokens covering ``data``: int32 ``(n, length+1)``.

    Window ``j`` starts at ``j·length``, so every byte after the first is a target exactly
    once and the mean loss over the windows is the split's cross entropy. With ``max_windows``
    (fewer than fit) the windows are that many of these, evenly spaced over the whole split
    (deterministic), so a capped evaluation still samples every part of the text. Only the
    windows are read from ``data`` (an ``np.memmap`` of a token file stays on disk); ``check``
    reads every value of it (tokens in ``[0, vocab_size)``).
    """
    data = np.asarray(data)
    if check:
        check_tokens(data, "data", vocab_size)
    _check_length(data.size, length, "validation split")
    n = (data.size - 1) // length
    picked = np.arange(n)
    if max_windows is not None:
        if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
            raise ValueError(f"max_windows must be a positive integer or None, got "
                             f"{max_windows!r}")
        if max_windows < n:
            picked = (np.arange(max_windows) * n) // max_windows
    starts = picked * length
    return data[starts[:, None] + np.arange(length + 1)].astype(np.int32)
