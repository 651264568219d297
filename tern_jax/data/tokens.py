"""Tokenizers and token files: a language model's vocabulary beyond the 256 bytes.

A language model reads bytes by default (256 symbols, :mod:`tern_jax.data.text`). With a
``tokenizer.json`` of the ``tokenizers`` package (``pip install 'tern_jax[tokenizer]'``) it
reads that tokenizer's tokens instead:

* :func:`train_tokenizer` learns a byte-level BPE (GPT-2's pre-tokenizer and byte alphabet,
  so every byte sequence has a tokenization and decoding gives the bytes back) from text
  streamed in pieces; :func:`load_tokenizer` reads any ``tokenizer.json``. A
  :class:`Tokenizer` knows its vocabulary size, a hash of its definition and, for every token,
  the bytes it stands for (:attr:`Tokenizer.token_bytes`): a validation loss is then reported
  in bits per byte too, total bits over the bytes the scored tokens cover.
* :func:`encode_corpus` tokenizes a corpus once into a *token file*: a 4,096-byte JSON
  header (:class:`TokenFileHeader`: the tokenizer's hash, the vocabulary size, the dtype, and
  per split its token count and the bytes its tokens cover), then the training tokens, then
  the validation tokens, as little-endian ``uint16`` or ``uint32``. The text is read in pieces
  (never whole) and the tokens are written as they come; :func:`open_token_file` maps the
  splits into memory (``np.memmap``) without reading them, so a training run samples windows
  of a corpus larger than memory.

Pieces are cut after a newline that has a non-whitespace byte on both sides, where GPT-2's
pre-tokenizer always ends a pre-token, so a byte-level BPE tokenizes the pieces exactly as it
tokenizes the whole text (``tests/test_tokens.py`` checks it). A piece without such a newline in
64 pieces' length is cut anyway (at a UTF-8 character start). Text that is not valid UTF-8 has
each bad byte replaced by U+FFFD before it is tokenized (the ``tokenizers`` package reads
Unicode strings); the header counts them.

The splits follow :func:`tern_jax.data.text.load_text`'s rules: ``python_stdlib`` (the
standard library's sources with its byte caps, the corpus of the byte-level studies), a file
(the last 10% of its bytes for validation) or a folder (split by file, by ``crc32`` of the
path; by position when that leaves a split empty), so a token file holds the same text as the
byte corpus of the same source.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["BYTE_VOCAB_SIZE", "TOKEN_FILE_FORMAT", "TOKENIZER_FILE", "Tokenizer",
           "TokenFile", "TokenFileHeader", "TokenCorpus", "encode_corpus", "is_token_file",
           "load_tokenizer", "open_token_file", "read_header", "text_pieces", "tokenize_text",
           "train_tokenizer", "write_token_file"]

BYTE_VOCAB_SIZE = 256
#: The name of a run folder's copy of its tokenizer (the exports read it).
TOKENIZER_FILE = "tokenizer.json"
TOKEN_FILE_FORMAT = "tern_jax.tokens.v1"
_MAGIC = b"TERNJAX-TOKENS\n"
_HEADER_SIZE = 4096
_PIECE = 1 << 18  # bytes of text per piece
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
SPLITS = ("train", "validation")


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("a BPE tokenizer needs the tokenizers package: pip install tokenizers "
                          "(in the checkout: pip install '.[tokenizer]'); without "
                          "data.tokenizer a language model reads bytes") from None
    return tokenizers


def _canonical_hash(text: str) -> str:
    """SHA-256 of the tokenizer's JSON with sorted keys and no spaces: the same tokenizer
    hashes alike however its file is laid out."""
    canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in of each byte, inverted: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _has_type(node, name: str) -> bool:
    """Whether a tokenizer.json component (or a sequence of them) is of type ``name``."""
    if not isinstance(node, dict):
        return False
    if node.get("type") == name:
        return True
    inner = node.get("pretokenizers") or node.get("decoders") or []
    return any(_has_type(n, name) for n in inner)


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with what training needs of it (see the module docstring).

    Attributes:
      path: the file it was read from (``None`` when trained in memory).
      hash: SHA-256 of its canonical JSON (:func:`load_tokenizer`).
      vocab_size: tokens, added (special) tokens included.
      byte_level: whether it is a byte-level BPE (GPT-2's byte alphabet): then
        :attr:`token_bytes` and :meth:`decode` are exact; otherwise a token's bytes are its
        text decoded alone, in UTF-8.
    """

    def __init__(self, backend, json_text: str, path: Path | None = None):
        self.backend = backend
        self.json = json_text
        self.path = path
        self.hash = _canonical_hash(json_text)
        self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        spec = json.loads(json_text)
        self.byte_level = (_has_type(spec.get("pre_tokenizer"), "ByteLevel")
                           and _has_type(spec.get("decoder"), "ByteLevel"))
        self._added = {t["id"]: t["content"] for t in spec.get("added_tokens") or []}

    def __repr__(self) -> str:
        kind = "byte-level BPE" if self.byte_level else "not byte-level"
        return f"Tokenizer({self.vocab_size} tokens, {kind}, sha256 {self.hash[:12]})"

    @functools.cached_property
    def token_bytes(self) -> list[bytes]:
        """The bytes each token id stands for (an added token: its text in UTF-8)."""
        out = []
        table = _byte_decoder() if self.byte_level else None
        for i in range(self.vocab_size):
            token = self.backend.id_to_token(i)
            if i in self._added or token is None:
                out.append(self._added.get(i, "").encode("utf-8"))
            elif table is not None:
                try:
                    out.append(bytes(table[c] for c in token))
                except KeyError:  # not of the byte alphabet: its text
                    out.append(token.encode("utf-8"))
            else:
                out.append(self.backend.decode([i], skip_special_tokens=False).encode("utf-8"))
        return out

    @functools.cached_property
    def token_lengths(self) -> np.ndarray:
        """``len(token_bytes[i])`` per token id, int32: the bytes a scored token covers."""
        return np.asarray([len(b) for b in self.token_bytes], np.int32)

    def encode(self, text) -> np.ndarray:
        """``text`` (bytes or str) as int32 token ids; bytes are decoded as UTF-8 (a bad byte
        becomes U+FFFD)."""
        if isinstance(text, (bytes, bytearray, memoryview)):
            text = bytes(text).decode("utf-8", errors="replace")
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be bytes or a str, got {type(text).__name__}")
        return np.asarray(self.backend.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_pieces(self, pieces: list[bytes]) -> list[np.ndarray]:
        """Each piece's tokens (``tokenizers`` encodes the batch on every core)."""
        texts = [p.decode("utf-8", errors="replace") for p in pieces]
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encodings]

    def decode(self, ids) -> bytes:
        """The bytes of token ids: exact for a byte-level BPE (any byte sequence, valid UTF-8
        or not), the decoded text in UTF-8 otherwise."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode: token id {bad[0]} is outside the vocabulary "
                             f"[0, {self.vocab_size})")
        if self.byte_level:
            return b"".join(self.token_bytes[i] for i in ids)
        return self.backend.decode(ids, skip_special_tokens=False).encode("utf-8")

    def save(self, path) -> Path:
        """Writes the tokenizer's JSON (as read) to ``path`` atomically."""
        from tern_jax.fs import write_text_atomic

        write_text_atomic(path, self.json)
        return Path(path)


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, mtime_ns: int, size: int) -> Tokenizer:
    del mtime_ns, size  # the cache key: a file changed on disk is read again
    tokenizers = _tokenizers()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        backend = tokenizers.Tokenizer.from_str(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"tokenizer {path} is not a tokenizer.json ({e}); give the file a "
                         "tokenizers.Tokenizer saves (tern-jax tokenizer train writes "
                         "one)") from None
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"tokenizer {path} does not parse as a tokenizer.json ({first}); "
                         "give the file a tokenizers.Tokenizer saves (tern-jax tokenizer train "
                         "writes one)") from None
    return Tokenizer(backend, text, file)


def load_tokenizer(path) -> Tokenizer:
    """Reads a ``tokenizer.json`` (any the ``tokenizers`` package saves; read once per process
    while the file is unchanged).

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for one that does not
    parse, and ``ImportError`` without the ``tokenizers`` package.
    """
    from tern_jax._args import check_path

    file = check_path(path, "path", "load_tokenizer").resolve()
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise FileNotFoundError(f"tokenizer {file} {what}; give a tokenizer.json (tern-jax "
                                "tokenizer train --vocab 4096 --text PATH --out tok.json "
                                "makes one)")
    stat = file.stat()
    return _load_cached(str(file), stat.st_mtime_ns, stat.st_size)


# -- text in pieces -----------------------------------------------------------------------------

def _is_space(byte: int) -> bool:
    return byte in b" \t\n\r\x0b\x0c"


def _safe_cut(buffer: bytes, start: int) -> int:
    """The first position ``c >= start`` in ``buffer`` where a new piece may begin: right after
    a newline with a non-whitespace byte on both sides; ``-1`` when there is none."""
    p = buffer.find(b"\n", max(start - 1, 1))
    while 0 < p < len(buffer) - 1:
        if not _is_space(buffer[p + 1]) and not _is_space(buffer[p - 1]):
            return p + 1
        p = buffer.find(b"\n", p + 1)
    return -1


def _char_start(buffer: bytes, p: int) -> int:
    """``p`` moved back to the start of a UTF-8 character (a continuation byte is 10xxxxxx)."""
    q = p
    while q > 0 and p - q < 4 and (buffer[q] & 0xC0) == 0x80:
        q -= 1
    return q if q > 0 else p


def _pieces(chunks: Iterable[bytes], piece: int = _PIECE) -> Iterator[bytes]:
    """The concatenation of ``chunks`` re-cut into pieces of about ``piece`` bytes, each ending
    at the first safe position after ``piece`` bytes (see the module docstring)."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) > piece:
            cut = _safe_cut(buffer, piece)
            if cut < 0 and len(buffer) > 64 * piece:
                cut = _char_start(buffer, piece)
            if cut < 0:
                break
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


class _Segment(NamedTuple):
    path: Path
    start: int
    stop: int


def _read_segments(segments: list[_Segment], read: int = 1 << 20) -> Iterator[bytes]:
    for seg in segments:
        with open(seg.path, "rb") as f:
            f.seek(seg.start)
            left = seg.stop - seg.start
            while left > 0:
                data = f.read(min(read, left))
                if not data:
                    break
                left -= len(data)
                yield data


def _by_position(files: list[Path]) -> dict[str, list[_Segment]]:
    """The concatenation of ``files`` cut at 90% of its bytes (load_text's position split)."""
    sizes = [f.stat().st_size for f in files]
    cut = int(sum(sizes) * 0.9)
    out = {"train": [], "validation": []}
    offset = 0
    for f, size in zip(files, sizes):
        a, b = offset, offset + size
        if a < cut:
            out["train"].append(_Segment(f, 0, min(b, cut) - a))
        if b > cut:
            out["validation"].append(_Segment(f, max(cut - a, 0), size))
        offset = b
    return out


def _segments(path: Path) -> tuple[dict[str, list[_Segment]], str]:
    """load_text's splits of a local file or folder, as byte ranges of files (nothing read
    but the first 8,000 bytes of each file of a folder, to skip binary ones)."""
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(8000)
        if not head:
            raise ValueError(f"text {str(path)!r} is empty; give a file holding text")
        if b"\x00" in head:
            raise ValueError(f"text {str(path)!r} is not text (it holds NUL bytes: a binary "
                             "file); give a plain text file or a folder of them")
        return _by_position([path]), f"{path}: one file split by position (last 10%)"
    files = []
    for p in sorted(path.rglob("*")):
        relative = p.relative_to(path)
        if not p.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        with open(p, "rb") as f:
            head = f.read(8000)
        if head and b"\x00" not in head[:8000]:
            files.append((relative.as_posix(), p))
    if not files:
        raise ValueError(f"text {str(path)!r} holds no non-empty text files; give a folder of "
                         "text files")
    crc = {rel: zlib.crc32(rel.encode("utf-8")) for rel, _ in files}
    order = sorted(files, key=lambda item: (crc[item[0]], item[0]))
    splits = {"train": [], "validation": []}
    for rel, p in order:
        split = "validation" if crc[rel] % 10 == 0 else "train"
        splits[split].append(_Segment(p, 0, p.stat().st_size))
    if splits["train"] and splits["validation"]:
        return splits, f"{path}: {len(files)} text files split by file (crc32(path) % 10 == 0)"
    return (_by_position([p for _, p in files]),  # load_text's order: by path
            f"{path}: {len(files)} text files, too few to split by file: split by position")


def text_pieces(text) -> tuple[dict[str, Iterator[bytes]], str]:
    """The train and validation splits of a corpus as iterators of byte pieces, and where
    they came from in words.

    ``text``: ``"python_stdlib"`` (loaded by :func:`~tern_jax.data.text.load_text`, capped)
    or the path of a text file or folder (streamed from the disk).
    """
    if isinstance(text, str) and text == "python_stdlib":
        from tern_jax.data.text import load_text

        data = load_text("python_stdlib")
        return ({"train": _pieces([bytes(data.train)]),
                 "validation": _pieces([bytes(data.validation)])}, data.description)
    from tern_jax._args import check_path

    path = check_path(text, "text", "text_pieces")
    if not path.exists():
        raise FileNotFoundError(f"text {str(path)!r} does not exist; give a text file, a folder "
                                "of text files, or python_stdlib")
    segments, how = _segments(path)
    return {split: _pieces(_read_segments(segs)) for split, segs in segments.items()}, how


def train_tokenizer(text, vocab_size: int, *, special_tokens=("<|endoftext|>",),
                    min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` tokens learnt from the training split of ``text``
    (see :func:`text_pieces`), read in pieces.

    The vocabulary holds the 256 bytes (GPT-2's byte alphabet), ``special_tokens`` and the
    merges learnt, ``vocab_size`` in all (fewer when the text offers fewer merges).
    """
    from tern_jax._args import check_int

    check_int(vocab_size, "vocab_size", "train_tokenizer", minimum=BYTE_VOCAB_SIZE + 1 +
              len(special_tokens))
    if vocab_size > 2**32:
        raise ValueError(f"train_tokenizer: vocab_size {vocab_size} does not fit a uint32 "
                         "token file")
    tk = _tokenizers()
    splits, _ = text_pieces(text)
    backend = tk.Tokenizer(tk.models.BPE())
    backend.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=list(special_tokens),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(
        (p.decode("utf-8", errors="replace") for p in splits["train"]), trainer=trainer)
    return Tokenizer(backend, backend.to_str())


# -- token files --------------------------------------------------------------------------------

class TokenFileHeader(NamedTuple):
    """A token file's header (see the module docstring).

    Attributes:
      tokenizer_hash: :attr:`Tokenizer.hash` of the tokenizer that made it.
      vocab_size: its vocabulary.
      dtype: ``"uint16"`` or ``"uint32"``.
      splits: ``{"train": {"tokens", "bytes", "offset"}, "validation": {...}}``: token count,
        the bytes those tokens cover, and where they start in the file (in bytes).
      source: where the text came from, in words.
      replaced_bytes: bytes of the text that were not UTF-8 (replaced by U+FFFD).
    """

    tokenizer_hash: str
    vocab_size: int
    dtype: str
    splits: dict
    source: str
    replaced_bytes: int = 0


def _dtype_for(vocab_size: int, dtype: str | None) -> str:
    if dtype is None:
        return "uint16" if vocab_size <= 2**16 else "uint32"
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be uint16 or uint32, got {dtype!r}")
    if dtype == "uint16" and vocab_size > 2**16:
        raise ValueError(f"the tokenizer has {vocab_size:,} tokens, more than uint16 holds "
                         f"({2**16:,}); use dtype uint32 (or leave it out: chosen by the "
                         "vocabulary size)")
    return dtype


def is_token_file(path) -> bool:
    """Whether ``path`` is a token file (its first bytes are the format's)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def _bad_bytes(piece: bytes):
    """Positions of bytes that are not part of valid UTF-8."""
    i = 0
    while i < len(piece):
        try:
            piece[i:].decode("utf-8")
            return
        except UnicodeDecodeError as e:
            for k in range(e.start, e.end):
                yield i + k
            i += e.end


def _check_out(out, overwrite: bool, func: str) -> Path:
    from tern_jax import fs
    from tern_jax._args import check_path, unwritable_path_error

    out = check_path(out, "out", func)
    if out.is_dir():
        raise IsADirectoryError(f"{func}: {out} is a folder; a token file is one file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it, or choose "
                              "a new path")
    if out.exists() and not is_token_file(out):
        raise fs.NotOwnedError(f"{out} is not a token file tern_jax wrote; it is left untouched. "
                               "Choose a new path")
    error = unwritable_path_error(out, func)
    if error is not None:
        raise error
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{func}: the folder {out.parent} does not exist")
    return out


def write_token_file(out, splits: dict, *, tokenizer_hash: str, vocab_size: int,
                     token_lengths=None, dtype: str | None = None, source: str = "",
                     overwrite: bool = False, replaced_bytes=0) -> TokenFileHeader:
    """Writes token arrays as a token file: ``splits`` maps ``"train"`` and ``"validation"``
    to iterables of integer arrays (appended in order, never held together); returns the
    header. ``token_lengths``: the bytes each token id stands for (the header's bytes
    covered; ``None``: one byte a token). ``replaced_bytes``: a count, or a function giving it
    once the splits are consumed.

    The tokens go to a temporary file beside ``out``, renamed over it once complete: a failure
    leaves nothing (and an existing ``out`` as it was). Raises ``ValueError`` for a dtype too
    narrow for ``vocab_size``, a token outside the vocabulary, or a split of fewer than 2
    tokens; ``FileExistsError`` for an existing ``out`` without ``overwrite``.
    """
    from tern_jax import fs

    name = _dtype_for(vocab_size, dtype)
    np_dtype = _DTYPES[name]
    out = _check_out(out, overwrite, "write_token_file")
    lengths = None if token_lengths is None else np.asarray(token_lengths, np.int64)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * _HEADER_SIZE)
            info = {}
            for split in SPLITS:
                offset, count, covered = f.tell(), 0, 0
                for ids in splits[split]:
                    ids = np.asarray(ids)
                    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                        raise ValueError(f"the {split} split holds token ids outside "
                                         f"[0, {vocab_size}) (e.g. {int(ids.max())})")
                    f.write(ids.astype(np_dtype).tobytes())
                    count += ids.size
                    covered += int(lengths[ids].sum()) if lengths is not None else ids.size
                if count < 2:
                    raise ValueError(f"the {split} split of {source or 'the text'} holds {count} "
                                     "tokens; a language model needs at least 2. Give more text")
                info[split] = {"tokens": count, "bytes": covered, "offset": offset}
            replaced = replaced_bytes() if callable(replaced_bytes) else int(replaced_bytes)
            header = TokenFileHeader(tokenizer_hash, int(vocab_size), name, info, source,
                                     replaced)
            f.seek(0)
            f.write(_header_bytes(header))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, fs._new_file_mode())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return header


def encode_corpus(tokenizer: Tokenizer, text, out, *, dtype: str | None = None,
                  overwrite: bool = False, batch: int = 16) -> TokenFileHeader:
    """Tokenizes ``text`` (:func:`text_pieces`) into the token file ``out``; returns its header.

    The text is read and encoded ``batch`` pieces at a time and the tokens are appended to the
    file as they come (:func:`write_token_file`: nothing is left on failure). ``dtype``:
    ``"uint16"``, ``"uint32"`` or ``None`` (uint16 up to 65,536 tokens).

    Raises ``ValueError`` for a uint16 file of a larger vocabulary, an empty split, or text
    that is no text; ``FileExistsError`` for an existing ``out`` without ``overwrite``.
    """
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"encode_corpus: tokenizer must be a Tokenizer (load_tokenizer), got "
                        f"{type(tokenizer).__name__}")
    _dtype_for(tokenizer.vocab_size, dtype)
    _check_out(out, overwrite, "encode_corpus")
    splits, source = text_pieces(text)
    replaced = [0]

    def encoded(pieces):
        group: list[bytes] = []
        for piece in _with_end(pieces):
            if piece is not None:
                group.append(piece)
                replaced[0] += sum(1 for _ in _bad_bytes(piece))
            if group and (piece is None or len(group) >= batch):
                yield from tokenizer.encode_pieces(group)
                group = []

    return write_token_file(out, {k: encoded(v) for k, v in splits.items()},
                            tokenizer_hash=tokenizer.hash, vocab_size=tokenizer.vocab_size,
                            token_lengths=tokenizer.token_lengths, dtype=dtype, source=source,
                            overwrite=overwrite, replaced_bytes=lambda: replaced[0])


def _with_end(items):
    """``items``, then ``None``."""
    yield from items
    yield None


def _header_bytes(header: TokenFileHeader) -> bytes:
    body = json.dumps({"format": TOKEN_FILE_FORMAT, **header._asdict()}, indent=1).encode()
    data = _MAGIC + body + b"\n"
    if len(data) > _HEADER_SIZE:
        raise ValueError("the token file's header does not fit its 4,096 bytes (source "
                         "description too long)")
    return data + b" " * (_HEADER_SIZE - len(data))


class TokenFile(NamedTuple):
    """An opened token file: its header and its splits mapped into memory (read on access)."""

    path: Path
    header: TokenFileHeader
    train: np.ndarray
    validation: np.ndarray

    @property
    def vocab_size(self) -> int:
        return self.header.vocab_size


def read_header(path) -> TokenFileHeader:
    """A token file's header; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(_HEADER_SIZE)
    if not head.startswith(_MAGIC):
        raise ValueError(f"{path} is not a token file (tern-jax tokenizer encode writes them)")
    try:
        data = json.loads(head[len(_MAGIC):].decode("utf-8"))
        if data.pop("format") != TOKEN_FILE_FORMAT:
            raise ValueError("another format")
        header = TokenFileHeader(**data)
        size = path.stat().st_size
        for split in SPLITS:
            info = header.splits[split]
            end = info["offset"] + info["tokens"] * _DTYPES[header.dtype].itemsize
            if end > size:
                raise ValueError(f"its {split} split ends at byte {end:,} of {size:,}: the file "
                                 "is truncated")
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: a damaged token file header ({e}); encode the corpus "
                         "again") from None
    return header


def open_token_file(path, tokenizer: Tokenizer | None = None,
                    vocab_size: int | None = None) -> TokenFile:
    """The token file at ``path``, its splits as read-only ``np.memmap`` arrays.

    With ``tokenizer`` (and ``vocab_size``: the model's), a file made by another tokenizer
    (another hash) or of another vocabulary size is a ``ValueError`` naming both.
    """
    path = Path(path)
    header = read_header(path)
    if tokenizer is not None and header.tokenizer_hash != tokenizer.hash:
        raise ValueError(
            f"{path} was made with another tokenizer (sha256 {header.tokenizer_hash[:12]}) than "
            f"data.tokenizer {tokenizer.path} (sha256 {tokenizer.hash[:12]}); encode the corpus "
            "with this tokenizer (tern-jax tokenizer encode), or set data.tokenizer to the one "
            "that made it")
    if vocab_size is not None and header.vocab_size != vocab_size:
        raise ValueError(f"{path} holds tokens of a {header.vocab_size:,}-token vocabulary, but "
                         f"the model's vocab_size is {vocab_size:,}; train the model with the "
                         "tokenizer that made the file")
    dtype = _DTYPES[header.dtype]
    arrays = {split: np.memmap(path, dtype, "r", header.splits[split]["offset"],
                               (header.splits[split]["tokens"],)) for split in SPLITS}
    return TokenFile(path, header, arrays["train"], arrays["validation"])


# -- in memory --------------------------------------------------------------------------------

class TokenCorpus(NamedTuple):
    """A corpus tokenized in memory (the small-corpus path): as a
    :class:`~tern_jax.data.text.TextDataset` with a vocabulary of the tokenizer's."""

    train: np.ndarray
    validation: np.ndarray
    name: str
    description: str
    vocab_size: int
    token_lengths: np.ndarray


_CORPORA: dict[tuple, TokenCorpus] = {}


def tokenize_text(data, tokenizer: Tokenizer) -> TokenCorpus:
    """A byte corpus (:class:`~tern_jax.data.text.TextDataset`) tokenized in memory, in the
    same pieces as :func:`encode_corpus` (so the same tokens); cached per process."""
    key = (data.name, data.train.size, data.validation.size, tokenizer.hash)
    if key in _CORPORA:
        return _CORPORA[key]
    dtype = _DTYPES[_dtype_for(tokenizer.vocab_size, None)]
    splits = {}
    for split in SPLITS:
        pieces = list(_pieces([bytes(getattr(data, split))]))
        ids = tokenizer.encode_pieces(pieces)
        tokens = np.concatenate(ids).astype(dtype) if ids else np.zeros(0, dtype)
        tokens.setflags(write=False)
        splits[split] = tokens
    corpus = TokenCorpus(splits["train"], splits["validation"], data.name,
                         f"{data.description}; tokenized by {tokenizer!r}: train "
                         f"{splits['train'].size:,} tokens, validation "
                         f"{splits['validation'].size:,} tokens", tokenizer.vocab_size,
                         tokenizer.token_lengths)
    _CORPORA[key] = corpus
    return corpus
