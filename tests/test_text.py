"""Specification of the byte-level text corpora and their windows."""

import zlib

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh

from tern_jax.data.inputs import DeviceText, window_starts
from tern_jax.data.text import TextDataset, eval_windows, load_text, python_stdlib_dir

MESH = Mesh(np.array(jax.devices()[:1]), ("data",))


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


def _device_text(train, validation, *, seeds=(0,), seq_len, batch_size, steps_per_epoch,
                 test_subset=None, eval_batch_size=8):
    data = TextDataset(np.asarray(train, np.uint8), np.asarray(validation, np.uint8), "random",
                       "random bytes")
    return DeviceText(data, seeds=seeds, seq_len=seq_len, batch_size=batch_size,
                      eval_batch_size=eval_batch_size, steps_per_epoch=steps_per_epoch,
                      test_subset=test_subset, mesh=MESH)


@settings(max_examples=15)  # each example compiles its own plan: sizes are constants in it
@given(size=st.integers(2, 48), data=st.data())
def test_every_training_window_is_a_slice_of_the_text_within_it(size, data):
    """Whatever the sizes, each window training draws is ``text[s : s + seq_len + 1]`` with
    ``s + seq_len < size``, for every step and model of two epochs' plans."""
    seq_len = data.draw(st.integers(1, size - 1), label="seq_len")
    batch = data.draw(st.integers(1, 5), label="batch")
    steps = data.draw(st.integers(1, 3), label="steps")
    seeds = data.draw(st.lists(st.integers(0, 1000), min_size=1, max_size=2), label="seeds")
    tokens = np.frombuffer(data.draw(st.binary(min_size=size, max_size=size), label="text"),
                           np.uint8)
    inputs = _device_text(tokens, tokens, seeds=seeds, seq_len=seq_len, batch_size=batch,
                          steps_per_epoch=steps)
    assert inputs.num_train == size - seq_len and inputs.steps_per_epoch == steps
    batch_at = jax.jit(inputs.batch_at)
    for epoch in (0, 1):
        idx, keys = inputs.epoch_plan(epoch)
        assert idx.shape == (steps, len(seeds), batch)
        for step in range(steps):
            starts = np.asarray(idx[step])
            assert np.all(starts >= 0) and np.all(starts + seq_len < size), (starts, size)
            windows = np.asarray(batch_at(inputs.arrays, idx[step], keys[step])["tokens"])
            assert windows.shape == (len(seeds), batch, seq_len + 1)
            assert windows.dtype == np.int32
            expected = np.stack([[tokens[s: s + seq_len + 1] for s in row] for row in starts])
            np.testing.assert_array_equal(windows, expected)


def test_window_starts_reach_every_start_up_to_the_window_ending_at_the_last_token():
    starts = np.asarray(window_starts(jax.random.key(0), 50, 8, 20, 5))
    assert starts.shape == (50, 8)
    assert set(starts.ravel().tolist()) == set(range(15))  # 14 + 5 = 19, the last token
    again = np.asarray(window_starts(jax.random.key(0), 50, 8, 20, 5))
    np.testing.assert_array_equal(starts, again)
    assert np.asarray(window_starts(jax.random.key(1), 4, 3, 6, 5)).tolist() == [[0] * 3] * 4


def test_models_of_one_seed_draw_the_same_windows_and_epochs_differ():
    tokens = np.arange(200) % 256
    inputs = _device_text(tokens, tokens, seeds=(3, 3, 4), seq_len=10, batch_size=8,
                          steps_per_epoch=2)
    idx, _ = inputs.epoch_plan(0)
    idx = np.asarray(idx)
    np.testing.assert_array_equal(idx[:, 0], idx[:, 1])
    assert not np.array_equal(idx[:, 0], idx[:, 2])
    assert not np.array_equal(idx, np.asarray(inputs.epoch_plan(1)[0]))
    np.testing.assert_array_equal(idx, np.asarray(inputs.epoch_plan(0)[0]))  # resumable


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
    with pytest.raises(ValueError, match=r"random: the training split holds 5 tokens, fewer "
                                         r"than one window of data.seq_len=8 \+ 1"):
        _device_text(np.zeros(5), np.zeros(20), seq_len=8, batch_size=2, steps_per_epoch=1)


def test_tiny_shakespeare_without_tensorflow_datasets_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(FileNotFoundError, match="tiny_shakespeare needs tensorflow_datasets"):
        load_text("tiny_shakespeare", data_dir="/nonexistent/tfds")


def _token_file(path, train, validation, vocab=1000, lengths=None):
    from tern_jax.data.tokens import open_token_file, write_token_file

    write_token_file(path, {"train": [train], "validation": [validation]},
                     tokenizer_hash="test", vocab_size=vocab, token_lengths=lengths,
                     overwrite=True)
    return open_token_file(path)


@settings(max_examples=12, deadline=None)  # each example reads its windows through grain
@given(size=st.integers(2, 60), data=st.data())
def test_every_streamed_window_is_a_slice_of_the_token_file_within_it(tmp_path_factory, size,
                                                                       data):
    """Whatever the sizes, each window a token file's stream yields is
    ``tokens[s : s + seq_len + 1]`` with ``s + seq_len < count``, per model seed, for every
    step of two epochs; the rows of two processes are the rows of one."""
    from tern_jax.data.inputs import StreamedText

    seq_len = data.draw(st.integers(1, size - 1), label="seq_len")
    batch = 2 * data.draw(st.integers(1, 3), label="half batch")
    steps = data.draw(st.integers(1, 3), label="steps")
    seeds = data.draw(st.lists(st.integers(0, 1000), min_size=1, max_size=3), label="seeds")
    tokens = np.asarray(data.draw(st.lists(st.integers(0, 999), min_size=size, max_size=size),
                                  label="tokens"))
    path = tmp_path_factory.mktemp("tokens") / "corpus.tok"
    opened = _token_file(path, tokens, tokens)
    np.testing.assert_array_equal(opened.train, tokens)
    assert isinstance(opened.train, np.memmap) and not opened.train.flags.writeable
    inputs = StreamedText(opened, seeds=seeds, seq_len=seq_len, batch_size=batch,
                          eval_batch_size=4, steps_per_epoch=steps, test_subset=None,
                          mesh=MESH)
    assert inputs.num_train == size - seq_len and inputs.streamed and inputs.per_model
    for epoch in (0, 1):
        windows = inputs._windows.at_epoch(epoch)
        got = [np.asarray(b["tokens"]) for b in inputs.train_batches(epoch)]
        assert len(got) == steps
        for step, batch_tokens in enumerate(got):
            assert batch_tokens.shape == (len(seeds), batch, seq_len + 1)
            for m, seed in enumerate(seeds):
                starts = windows.starts(seed, step)
                assert np.all(starts >= 0) and np.all(starts + seq_len < size), (starts, size)
                expected = np.stack([tokens[s: s + seq_len + 1] for s in starts])
                np.testing.assert_array_equal(batch_tokens[m], expected)
            halves = [windows.__class__(str(path), windows.offset, size, "uint16", seeds,
                                        seq_len, batch, p, batch // 2, epoch)(step)
                      for p in (0, 1)]
            np.testing.assert_array_equal(np.concatenate(halves, axis=1), batch_tokens)


def test_a_token_file_too_short_for_a_window_or_a_vocabulary_is_refused(tmp_path):
    from tern_jax.data.inputs import StreamedText
    from tern_jax.data.tokens import open_token_file, write_token_file

    opened = _token_file(tmp_path / "short.tok", np.arange(5), np.arange(40))
    with pytest.raises(ValueError, match=r"short.tok: the training split holds 5 tokens, "
                                         r"fewer than one window of data.seq_len=8 \+ 1"):
        StreamedText(opened, seeds=(0,), seq_len=8, batch_size=2, eval_batch_size=4,
                     steps_per_epoch=1, test_subset=None, mesh=MESH)
    with pytest.raises(ValueError, match="holds tokens of a 1,000-token vocabulary, but the "
                                         "model's vocab_size is 256"):
        open_token_file(tmp_path / "short.tok", vocab_size=256)
    out = tmp_path / "wide.tok"
    with pytest.raises(ValueError, match="more than uint16 holds"):
        write_token_file(out, {"train": [np.arange(4)], "validation": [np.arange(4)]},
                         tokenizer_hash="x", vocab_size=70_000, dtype="uint16")
    with pytest.raises(ValueError, match="the validation split of the text holds 1 tokens"):
        write_token_file(out, {"train": [np.arange(4)], "validation": [np.arange(1)]},
                         tokenizer_hash="x", vocab_size=10)
    assert not out.exists() and not list(tmp_path.glob(".wide.tok.*"))  # nothing left
    wide = write_token_file(out, {"train": [np.arange(4) * 20_000], "validation": [[1, 2]]},
                            tokenizer_hash="x", vocab_size=70_000)
    assert wide.dtype == "uint32" and open_token_file(out).train.tolist() == [0, 20_000,
                                                                               40_000, 60_000]
    data = bytearray(out.read_bytes())
    out.write_bytes(bytes(data[:-3]))  # truncated
    with pytest.raises(ValueError, match="wide.tok: a damaged token file header .*truncated"):
        open_token_file(out)
