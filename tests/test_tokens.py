"""BPE tokenizers (the ``tokenizers`` package), token files, and language models of their tokens.

One tokenizer of 300 tokens is trained once (module scope) on a small code-like text; the runs
train ``transformer_tiny`` on its tokens for a few steps. The memory test streams a token file
of 3 GiB (sparse: it costs no disk) in a subprocess whose data segment is capped at 1.5 GiB,
and checks its peak resident memory stays under 1 GiB.
"""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers.runs import copy_run
from hypothesis import given, settings
from hypothesis import strategies as st

from tern_jax.cli import main
from tern_jax.train import Config, override, run
from tern_jax.train.metrics import read

tokenizers = pytest.importorskip("tokenizers")

from tern_jax.data import tokens as tk  # noqa: E402

REPO = Path(__file__).parent.parent
QUIET = {"log": lambda *a: None}
TEXT = "".join(f"def función_{i}(x, y={i}):\n    return x * {i} + y  # ñ é ü\n\n\n"
               f"class C{i}:\n\tpass\n" for i in range(300)).encode()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    text = root / "code.py"
    text.write_bytes(TEXT)
    tokenizer = tk.train_tokenizer(str(text), 300)
    tokenizer.save(root / "tok.json")
    header = tk.encode_corpus(tk.load_tokenizer(root / "tok.json"), str(text), root / "c.tok")
    return {"root": root, "text": text, "tok": root / "tok.json", "corpus": root / "c.tok",
            "header": header}


def _config(files, changes=None) -> Config:
    config = Config(
        name="tok_test", seeds=(0,),
        model={"name": "transformer_tiny", "variants": ("tern",)},
        data={"dataset": "text", "text_path": str(files["corpus"]),
              "tokenizer": str(files["tok"]), "steps_per_epoch": 3, "batch_size": 4,
              "seq_len": 16, "augment": False, "test_subset": 8, "eval_batch_size": 8},
        optimizer={"name": "adam", "learning_rate": 3e-3, "weight_decay": 0.0},
        schedule={"epochs": 2, "name": "constant"}, checkpointing={"every": 1},
        progress=False)
    return override(config, changes or {})


def test_a_trained_tokenizer_round_trips_any_bytes_and_hashes_its_definition(files, tmp_path):
    tokenizer = tk.load_tokenizer(files["tok"])
    assert tokenizer.vocab_size == 300 and tokenizer.byte_level
    assert tk.load_tokenizer(files["tok"]) is tokenizer  # read once while unchanged
    for text in (TEXT[:500], "  \n\n\t  x  y\u00a0z 日本語 😀".encode(), b"a" * 50):
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert int(tokenizer.token_lengths[ids].sum()) == len(text)
    assert len(tokenizer.encode(TEXT)) < len(TEXT) / 2  # merges learnt
    end = tokenizer.backend.token_to_id("<|endoftext|>")
    assert tokenizer.token_bytes[end] == b"<|endoftext|>"
    # the same tokenizer laid out otherwise hashes alike; another one does not
    spaced = tmp_path / "spaced.json"
    spaced.write_text(json.dumps(json.loads(files["tok"].read_text()), indent=4))
    assert tk.load_tokenizer(spaced).hash == tokenizer.hash
    other = tk.train_tokenizer(str(files["text"]), 280)
    assert other.hash != tokenizer.hash and other.vocab_size == 280


def test_a_tokenizer_file_that_does_not_parse_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"type": "BPE"}')
    with pytest.raises(ValueError, match="bad.json does not parse as a tokenizer.json"):
        tk.load_tokenizer(bad)
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        tk.load_tokenizer(tmp_path / "missing.json")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "bc", " ", "  ", "\n", "\n\n", "\t", "é", "1", "(",
                                 "'s", "日", "\r\n"]), min_size=0, max_size=80),
       st.integers(1, 24))
def test_text_cut_into_pieces_tokenizes_as_the_whole_text(files, parts, piece):
    text = "".join(parts).encode()
    tokenizer = tk.load_tokenizer(files["tok"])
    pieces = list(tk._pieces([text[i: i + 5] for i in range(0, len(text), 5)], piece))
    assert b"".join(pieces) == text
    encoded = tokenizer.encode_pieces(pieces) if pieces else []
    whole = tokenizer.encode(text)
    np.testing.assert_array_equal(np.concatenate(encoded) if encoded else [], whole)


def test_a_corpus_is_encoded_in_pieces_into_a_token_file(files, tmp_path, monkeypatch):
    header, tokenizer = files["header"], tk.load_tokenizer(files["tok"])
    cut = int(len(TEXT) * 0.9)  # a file's validation split: its last 10%
    opened = tk.open_token_file(files["corpus"], tokenizer, 300)
    for split, text in (("train", TEXT[:cut]), ("validation", TEXT[cut:])):
        ids = tokenizer.encode(text)
        np.testing.assert_array_equal(getattr(opened, split), ids)
        assert header.splits[split] == {**header.splits[split], "tokens": ids.size,
                                        "bytes": len(text)}
    assert header.dtype == "uint16" and header.tokenizer_hash == tokenizer.hash
    assert tk.read_header(files["corpus"]) == header

    # the text is read in bounded pieces, never whole
    reads = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def seek(self, n):
            self.f.seek(n)

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

    big = tmp_path / "big.txt"
    big.write_bytes(TEXT * 40)  # 2.5 MB
    monkeypatch.setattr(tk, "open", lambda p, m="r": Spy(real_open(p, m)), raising=False)
    tk.encode_corpus(tokenizer, str(big), tmp_path / "big.tok")
    assert reads and all(0 < n <= 1 << 20 for n in reads)
    monkeypatch.undo()
    assert tk.read_header(tmp_path / "big.tok").splits["train"]["bytes"] == int(
        len(TEXT) * 40 * 0.9)

    with pytest.raises(FileExistsError, match="big.tok already exists; pass --overwrite"):
        tk.encode_corpus(tokenizer, str(big), tmp_path / "big.tok")
    wide = tk.Tokenizer(tokenizer.backend, tokenizer.json)
    wide.vocab_size = 70_000
    with pytest.raises(ValueError, match="70,000 tokens, more than uint16 holds"):
        tk.encode_corpus(wide, str(big), tmp_path / "wide.tok", dtype="uint16")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt' is empty"):
        tk.encode_corpus(tokenizer, str(tmp_path / "empty.txt"), tmp_path / "e.tok")
    assert not (tmp_path / "wide.tok").exists() and not (tmp_path / "e.tok").exists()


def test_the_command_line_trains_a_tokenizer_and_encodes_a_corpus(files, tmp_path, capsys):
    tok, corpus = tmp_path / "t.json", tmp_path / "c.tok"
    text = str(files["text"])
    assert main(["tokenizer", "train", "--vocab", "290", "--text", text, "--out", str(tok)]) == 0
    assert "a byte-level BPE of 290 tokens" in capsys.readouterr().out
    assert main(["tokenizer", "encode", "--tokenizer", str(tok), "--text", text, "--out",
                 str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "uint16 tokens" in out and "validation" in out
    assert main(["tokenizer", "encode", "--tokenizer", str(tok), "--text", text, "--out",
                 str(corpus)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    assert main(["tokenizer", "encode", "--tokenizer", str(bad), "--text", text, "--out",
                 str(tmp_path / "x.tok")]) == 2
    assert "does not parse as a tokenizer.json" in capsys.readouterr().err
    assert not (tmp_path / "x.tok").exists()


def test_the_model_vocabulary_follows_the_tokenizer(files):
    from tern_jax.train import resolve

    config = _config(files)
    assert resolve(config).task(config).config.vocab_size == 300
    with pytest.raises(ValueError, match="model.kwargs.vocab_size=256 conflicts with "
                                         "data.tokenizer .*which has 300 tokens"):
        _config(files, {"model.kwargs.vocab_size": 256})
    assert _config(files, {"model.kwargs.vocab_size": 300}).data.tokenizer
    with pytest.raises(ValueError, match="data.tokenizer=.* is not read by this run .image"):
        Config(data={"tokenizer": str(files["tok"])})


def test_bits_per_byte_are_the_bits_over_the_bytes_the_scored_tokens_cover():
    import jax.numpy as jnp

    from tern_jax.models.transformer import TransformerConfig
    from tern_jax.train.language_model import LanguageModel

    task = LanguageModel(TransformerConfig(max_len=8, d_model=8, num_heads=2, num_layers=1,
                                           vocab_size=512), 4)
    batch = {"tokens": jnp.zeros((2, 5), jnp.int32), "bytes": jnp.asarray([10.0, 7.0])}
    sums = task.eval_sums(jnp.zeros((2, 4, 512)), batch, jnp.asarray([1.0, 0.0]))
    assert float(sums["loss"]) == pytest.approx(4 * 9.0)  # 4 tokens of log2(512) bits
    assert float(sums["bytes"]) == 10.0  # the padded window adds nothing
    assert "bytes" not in task.eval_sums(jnp.zeros((2, 4, 512)), {"tokens": batch["tokens"]},
                                         jnp.ones(2))


@pytest.fixture(scope="module")
def streamed(files, tmp_path_factory):
    """Two epochs from the token file, and the same run cut after one epoch and resumed."""
    root = tmp_path_factory.mktemp("streamed")
    results = run(_config(files), root / "full", **QUIET)
    run(_config(files, {"schedule.epochs": 1}), root / "cut", **QUIET)
    run(_config(files), root / "cut", resume=True, **QUIET)
    return root, results


@pytest.mark.slow  # trains language models
def test_a_model_trains_from_a_token_file_reports_bits_per_byte_and_resumes_exactly(
        files, streamed):
    from tern_jax.data.inputs import eval_arrays

    root, results = streamed
    records = read(root / "full")
    assert results["loss_name"] == "bits/token" and records[0]["loss_name"] == "bits/token"
    # bits per byte: the bits of the scored tokens over the bytes they cover
    tokenizer = tk.load_tokenizer(files["tok"])
    opened = tk.open_token_file(files["corpus"])
    windows = eval_arrays(opened.validation, 16, 8, check=False,
                          token_lengths=tokenizer.token_lengths)
    tokens_per_byte = windows["tokens"][:, 1:].size / windows["bytes"].sum()
    for m in records[-1]["models"]:
        assert m["test_bits_per_byte"] == pytest.approx(m["test_loss"] * tokens_per_byte,
                                                        rel=1e-5)
        assert m["test_loss"] < math.log2(300)
    bits = results["variants"]["tern"]["bits_per_byte"]["per_seed"]
    assert bits == [records[-1]["models"][0]["test_bits_per_byte"]]
    assert results["variants"]["tern"]["bits_per_token"]["per_seed"] == [
        records[-1]["models"][0]["test_loss"]]
    # the run keeps its tokenizer; the resumed run ends where the uninterrupted one did
    assert tk.load_tokenizer(root / "full" / "tokenizer.json").hash == tokenizer.hash
    cut = read(root / "cut")
    assert [r["epoch"] for r in cut] == [1, 2]
    for a, b in zip(cut[-1]["models"], records[-1]["models"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-6)


def test_a_small_corpus_is_tokenized_in_memory_as_the_token_file_holds_it(files):
    from tern_jax.data.inputs import DeviceText
    from tern_jax.data.text import load_text
    from tern_jax.data.tokens import tokenize_text
    from tern_jax.train import Trainer

    corpus = tokenize_text(load_text(text_path=files["text"]), tk.load_tokenizer(files["tok"]))
    opened = tk.open_token_file(files["corpus"])
    np.testing.assert_array_equal(corpus.train, opened.train)
    np.testing.assert_array_equal(corpus.validation, opened.validation)
    trainer = Trainer(_config(files, {"data.text_path": str(files["text"])}))
    assert isinstance(trainer.inputs, DeviceText)
    np.testing.assert_array_equal(np.asarray(trainer.inputs.arrays["tokens"]), opened.train)
    result = trainer.evaluate(trainer.init_state())
    assert 0 < result["test_bits_per_byte"][0] < result["test_loss"][0] < 9


@pytest.mark.slow  # trains language models
def test_a_token_file_of_another_tokenizer_or_a_resume_with_one_is_refused(files, streamed,
                                                                           tmp_path):
    other = tmp_path / "other.json"
    tk.train_tokenizer(str(files["text"]), 300, special_tokens=("<|end|>",)).save(other)
    with pytest.raises(ValueError, match="c.tok was made with another tokenizer"):
        run(_config(files, {"data.tokenizer": str(other)}), tmp_path / "x", **QUIET)
    assert not (tmp_path / "x" / "config.json").exists()
    with pytest.raises(ValueError, match="is a token file, which holds a tokenizer's tokens; "
                                         "set data.tokenizer"):
        run(_config(files, {"data.tokenizer": None}), tmp_path / "y", **QUIET)
    # the run, its token file swapped for one of a tokenizer of the same size, resumed with it
    workdir = copy_run(streamed[0] / "full", tmp_path)
    other_tokens = tmp_path / "other.tok"
    tk.encode_corpus(tk.load_tokenizer(other), str(files["text"]), other_tokens)
    changes = {"data.tokenizer": str(other), "data.text_path": str(other_tokens)}
    saved = json.loads((workdir / "config.json").read_text())
    saved["data"]["text_path"] = str(other_tokens)
    (workdir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="--resume of .*full with another tokenizer"):
        run(_config(files, {**changes, "schedule.epochs": 3}), workdir, resume=True, **QUIET)
    assert [r["epoch"] for r in read(workdir)] == [1, 2]


@pytest.mark.slow  # trains language models
def test_sample_and_generate_encode_and_decode_with_the_runs_tokenizer(files, streamed,
                                                                       tmp_path, capsys):
    import shutil

    import jax

    from tern_jax.models.transformer import Transformer, generate
    from tern_jax.nnx_utils import with_params
    from tern_jax.train import restore_run

    workdir = tmp_path / "moved"
    shutil.copytree(streamed[0] / "full", workdir)
    moved = tmp_path / "gone.json"  # the run reads its own copy, wherever the original went
    files["tok"].rename(moved)
    try:
        argv = ["sample", "--workdir", str(workdir), "--model", "tern/seed0", "--prompt",
                "def función", "--steps", "12", "--temperature", "0"]
        assert main(argv) == 0
        text = capsys.readouterr().out
        restored = restore_run(workdir)
    finally:
        moved.rename(files["tok"])
    assert text.startswith("def función") and len(text) > len("def función") + 5
    from flax import nnx

    from tern_jax import quantize_params

    tokenizer = tk.load_tokenizer(workdir / "tokenizer.json")
    params = jax.tree.map(lambda a: a[1], restored.state.params)
    params = quantize_params(params, restored.resolved.family.rules("tern"), unused="ignore")
    model = nnx.eval_shape(lambda: Transformer(restored.stack.task.config, rngs=nnx.Rngs(0)))
    model = with_params(model, params)
    out = generate(model, "def función", steps=12, key=jax.random.key(0), temperature=0,
                   tokenizer=tokenizer)
    assert text[:-1] == "def función" + out.decode("utf-8", errors="replace")
    with pytest.raises(ValueError, match="vocab_size=300 > 256: pass tokenizer="):
        generate(model, "def", steps=2, key=jax.random.key(0))


@pytest.mark.slow  # a subprocess trains from a 3 GiB token file
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA and /proc/self/status: Linux")
def test_training_streams_a_token_file_larger_than_the_memory_cap(files, tmp_path):
    """The training split is 3 GiB (1.5G uint16 tokens; a sparse file, so the test writes no
    3 GiB); the process's data segment is capped at 1.5 GiB (RLIMIT_DATA: reading the split
    into memory fails), and its peak resident memory must stay below 1 GiB."""
    tokenizer = tk.load_tokenizer(files["tok"])
    corpus = tmp_path / "huge.tok"
    count = 3 * 2**30 // 2
    validation = tokenizer.encode(TEXT[:4000])
    offset = tk._HEADER_SIZE
    header = tk.TokenFileHeader(tokenizer.hash, tokenizer.vocab_size, "uint16",
                                {"train": {"tokens": count, "bytes": count, "offset": offset},
                                 "validation": {"tokens": int(validation.size), "bytes": 4000,
                                                "offset": offset + 2 * count}}, "sparse")
    with open(corpus, "wb") as f:
        f.write(tk._header_bytes(header))
        f.seek(offset + 2 * count)  # the training tokens: a hole, read as token 0
        f.write(validation.astype("<u2").tobytes())
    assert corpus.stat().st_size > 3 * 2**30 and corpus.stat().st_blocks * 512 < 2**20
    config = _config(files, {"data.text_path": str(corpus), "schedule.epochs": 1,
                             "model.variants": ("tern",), "checkpointing.every": 0})
    (tmp_path / "config.json").write_text(config.to_json())
    script = textwrap.dedent(f"""
        import resource, sys
        cap = 3 * 2**29
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
        import numpy as np
        from tern_jax.train import run
        from tern_jax.train.config import from_json
        try:
            np.ones(2**31, np.uint8)
            sys.exit("the cap did not hold")
        except MemoryError:
            pass
        config = from_json(open({str(tmp_path / 'config.json')!r}).read())
        run(config, {str(tmp_path / 'run')!r}, log=lambda *a: None)
        # this process's own peak (VmHWM); ru_maxrss would hold the parent's size at the fork
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
        print("peak_rss_kib", hwm[0].split()[1])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = int(done.stdout.split("peak_rss_kib")[1]) * 1024
    print(f"streamed {corpus.stat().st_size / 2**30:.2f} GiB, peak resident {peak / 2**20:.0f} MiB")
    assert peak < 2**30, peak
    records = read(tmp_path / "run")
    assert records[-1]["models"][0]["test_bits_per_byte"] > 0


def test_without_the_tokenizers_package_a_tokenizer_is_one_clear_error(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    tk._load_cached.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"needs the tokenizers package: pip install "
                                              r"tokenizers .*pip install '.\[tokenizer\]'"):
            tk.load_tokenizer(files["tok"])
    finally:
        monkeypatch.undo()
        tk._load_cached.cache_clear()

