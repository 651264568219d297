"""Specification of the byte-level text corpora and their windows."""

import zlib

import jax
import numpy as np
import pytest

from tern_jax.data.text import eval_windows, load_text, python_stdlib_dir, random_windows


def test_one_file_is_split_by_position(tmp_path):
    text = bytes(range(32, 132)) * 3  # 300 bytes
    (tmp_path / "a.txt").write_bytes(text)
    ds = load_text(text_path=tmp_path / "a.txt")
    assert bytes(ds.train) == text[:270] and bytes(ds.validation) == text[270:]
    assert ds.vocab_size == 256 and "split by position" in ds.description
    assert not ds.train.flags.writeable


def test_a_folder_is_split_by_file_skipping_binary_and_hidden_files(tmp_path):
    names = [f"f{i:02d}.py" for i in range(30)]
    for name in names:
        (tmp_path / name).write_bytes(f"# {name}\n".encode())
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / ".hidden").write_bytes(b"secret\n")
    ds = load_text(text_path=tmp_path)
    validation = sorted(n for n in names if zlib.crc32(n.encode()) % 10 == 0)
    assert validation  # the rule puts some of these 30 names in validation
    text_of = {n: f"# {n}\n" for n in names}
    assert sorted(line[2:] for line in bytes(ds.validation).decode().splitlines()) == validation
    assert len(ds.train) + len(ds.validation) == sum(len(t) for t in text_of.values())
    assert b"secret" not in bytes(ds.train) + bytes(ds.validation)
    assert "1 binary/empty skipped" in ds.description


def test_the_python_standard_library_is_split_by_file_within_the_caps():
    ds = load_text(max_train_bytes=300_000, max_validation_bytes=60_000)
    assert 200_000 < ds.train.size <= 300_000 and 10_000 < ds.validation.size <= 60_000
    assert load_text(max_train_bytes=300_000, max_validation_bytes=60_000) is ds  # cached
    # the validation bytes are whole files whose path hash is 0 mod 10
    root = python_stdlib_dir()
    first = min((p for p in root.rglob("*.py") if "site-packages" not in p.parts
                 and zlib.crc32(p.relative_to(root).as_posix().encode()) % 10 == 0),
                key=lambda p: (zlib.crc32(p.relative_to(root).as_posix().encode()),
                               p.relative_to(root).as_posix()))
    head = first.read_bytes()
    if len(head) <= 60_000:
        assert bytes(ds.validation[: len(head)]) == head
    assert "split by file" in ds.description


def test_bad_text_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(ValueError, match="empty.txt' is empty"):
        load_text(text_path=tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="image.png' is not text"):
        load_text(text_path=tmp_path / "image.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text(text_path=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="unknown text dataset 'wiki'"):
        load_text("wiki")
    (tmp_path / "one.txt").write_bytes(b"ab")
    with pytest.raises(ValueError, match="train split holds 1 bytes"):
        load_text(text_path=tmp_path / "one.txt")
    folder = tmp_path / "bin_only"
    folder.mkdir()
    (folder / "x.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="holds no non-empty text files"):
        load_text(text_path=folder)


def test_random_windows_are_consecutive_bytes_of_the_text():
    data = jax.numpy.arange(200, dtype=jax.numpy.uint8)
    windows = np.asarray(random_windows(jax.random.key(0), data, 8, 10))
    assert windows.shape == (8, 11) and windows.dtype == np.int32
    for row in windows:
        np.testing.assert_array_equal(row, np.arange(row[0], row[0] + 11))
    assert len(set(windows[:, 0])) > 1
    again = np.asarray(random_windows(jax.random.key(0), data, 8, 10))
    np.testing.assert_array_equal(windows, again)


def test_eval_windows_make_every_byte_a_target_once():
    data = np.arange(103, dtype=np.uint8)
    windows = eval_windows(data, 10)
    assert windows.shape == (10, 11)
    np.testing.assert_array_equal(windows[:, 1:].reshape(-1), data[1:101])
    spread = eval_windows(data, 10, max_windows=3)  # windows 0, 3 and 6 of the 10
    np.testing.assert_array_equal(spread[:, 0], [0, 30, 60])


def test_a_window_longer_than_the_text_is_a_clear_error():
    with pytest.raises(ValueError, match="holds 5 bytes, fewer than one window of length 8"):
        eval_windows(np.arange(5, dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="fewer than one window of length 8"):
        random_windows(jax.random.key(0), jax.numpy.zeros(5, jax.numpy.uint8), 2, 8)


def test_tiny_shakespeare_without_tensorflow_datasets_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(FileNotFoundError, match="tiny_shakespeare needs tensorflow_datasets"):
        load_text("tiny_shakespeare", data_dir="/nonexistent/tfds")
