"""Every public function checks its arguments where they enter.

A wrong call ends in ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, outside
the accepted range) raised by tern_jax itself, whose message names the argument; never in a
traceback from jax, orbax, numpy, pathlib or ``re``, and never in a silent success.
"""

import re
import sys
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given
from hypothesis import strategies as st

import tern_jax
import tern_jax.data.text
import tern_jax.nnx_utils
from tern_jax import data, layers, packing
from tern_jax.data import ArrayDataset
from tern_jax.models import get_model, init_variables

W = jnp.ones((8, 4))
PARAMS = {"dense": {"kernel": W, "bias": jnp.zeros(4)}}
KEY = jax.random.key(0)
IMAGES = jnp.zeros((2, 8, 8, 3), jnp.uint8)


def _dataset():
    x = np.zeros((6, 8, 8, 1), np.uint8)
    y = np.arange(6, dtype=np.int32) % 2
    return ArrayDataset(x, y, x[:2], y[:2], 2, (0.5,), (0.2,), "tiny")


DS = _dataset()

# (id, call, exception type, the argument the message must name)
CASES = [
    # core and rules (validated by core.py / rules.py)
    ("ternarize-empty", lambda p: tern_jax.ternarize(jnp.zeros((0, 8))), ValueError, "w"),
    ("ternarize-None", lambda p: tern_jax.ternarize(None), TypeError, "w"),
    ("ternarize-int", lambda p: tern_jax.ternarize(jnp.ones((4, 4), jnp.int32)), TypeError,
     "dtype"),
    ("ternarize-axis-float", lambda p: tern_jax.ternarize(W, axis=1.5), TypeError, "axis"),
    ("ternarize-axis-range", lambda p: tern_jax.ternarize(W, axis=5), ValueError, "axis"),
    ("ternarize-method", lambda p: tern_jax.ternarize(W, method="foo"), ValueError, "method"),
    ("ternarize-threshold", lambda p: tern_jax.ternarize(W, threshold=2.0), ValueError,
     "threshold"),
    ("encode-stack-of-names", lambda p: tern_jax.encode(W, thresholds=("a",)), ValueError,
     "thresholds"),
    ("encode-t_ex-float", lambda p: tern_jax.encode(W, t_ex=1.5), ValueError, "t_ex"),
    ("encode-axis-repeated", lambda p: tern_jax.encode(W, axis=(1, -1)), ValueError, "axis"),
    ("decode-not-codes", lambda p: tern_jax.decode(W), TypeError, "codes"),
    ("decode-scales-layout", lambda p: tern_jax.decode(tern_jax.TernaryCodes(
        jnp.ones((8, 4), jnp.int8), jnp.ones(2))), ValueError, "scales"),
    ("decode-int-dtype", lambda p: tern_jax.decode(tern_jax.encode(W), jnp.int8), TypeError,
     "dtype"),
    ("dequantize-None", lambda p: tern_jax.dequantize(None, None), TypeError, "levels"),
    ("Rule-int", lambda p: tern_jax.Rule(5), TypeError, "pattern"),
    ("Rule-None", lambda p: tern_jax.Rule(None), TypeError, "pattern"),
    ("Rule-bad-regex", lambda p: tern_jax.Rule("("), ValueError, "pattern"),
    ("Rule-axis-str", lambda p: tern_jax.Rule(".*", axis="x"), TypeError, "axis"),
    ("Rule-t_ex-0", lambda p: tern_jax.Rule(".*", t_ex=0), ValueError, "t_ex"),
    ("Rule-method", lambda p: tern_jax.Rule(".*", method="bad"), ValueError, "method"),
    ("quantize_params-array", lambda p: tern_jax.quantize_params(W), TypeError, "params"),
    ("quantize_params-None", lambda p: tern_jax.quantize_params(None), TypeError, "params"),
    ("quantize_params-rules", lambda p: tern_jax.quantize_params(PARAMS, 5), TypeError, "rules"),
    ("quantize_params-unused", lambda p: tern_jax.quantize_params(PARAMS, unused="x"),
     ValueError, "unused"),
    ("quantize_params-threshold_scale",
     lambda p: tern_jax.quantize_params(PARAMS, threshold_scale=2.0), ValueError,
     "threshold_scale"),
    ("match_params-empty", lambda p: tern_jax.match_params({}), ValueError, "params"),
    # summary
    ("summary-None", lambda p: tern_jax.summary(None, print_fn=None), TypeError, "params"),
    ("summary-array", lambda p: tern_jax.summary(W, print_fn=None), TypeError, "params"),
    ("summary-str-leaf", lambda p: tern_jax.summary({"k": W, "name": "x"}, print_fn=None),
     TypeError, "name"),
    ("summary-print_fn", lambda p: tern_jax.summary(PARAMS, print_fn=1), TypeError, "print_fn"),
    ("summary-empty-kernel", lambda p: tern_jax.summary({"d": {"kernel": jnp.zeros((0, 8))}},
                                                        print_fn=None), ValueError, "d/kernel"),
    # save_ternary / load_ternary
    ("save-path-None", lambda p: tern_jax.save_ternary(None, PARAMS), TypeError, "path"),
    ("save-path-empty", lambda p: tern_jax.save_ternary("", PARAMS), ValueError, "path"),
    ("save-empty-tree", lambda p: tern_jax.save_ternary(p / "c", {}), ValueError, "params"),
    ("save-array", lambda p: tern_jax.save_ternary(p / "c", W), TypeError, "params"),
    ("save-str-leaf", lambda p: tern_jax.save_ternary(p / "c", {"k": W, "note": "s"}),
     TypeError, "note"),
    ("save-object-leaf", lambda p: tern_jax.save_ternary(p / "c", {"k": W, "fn": print}),
     TypeError, "fn"),
    ("save-overwrite-int", lambda p: tern_jax.save_ternary(p / "c", PARAMS, overwrite=1),
     TypeError, "overwrite"),
    ("save-rules", lambda p: tern_jax.save_ternary(p / "c", PARAMS, "x"), TypeError, "rules"),
    ("load-None", lambda p: tern_jax.load_ternary(None), TypeError, "path"),
    ("load-dtype-int8", lambda p: tern_jax.load_ternary(p / "c", dtype=jnp.int8), ValueError,
     "dtype"),
    ("load-dtype-str", lambda p: tern_jax.load_ternary(p / "c", dtype="nonsense"), TypeError,
     "dtype"),
    # packing
    ("values_per_word-float", lambda p: packing.values_per_word(2.5), TypeError, "levels"),
    ("values_per_word-bool", lambda p: packing.values_per_word(True), TypeError, "levels"),
    ("bits_per_weight-1", lambda p: packing.bits_per_weight(1), ValueError, "levels"),
    ("packed_nbytes-negative", lambda p: packing.packed_nbytes(-1, 3), ValueError, "count"),
    ("packed_nbytes-float", lambda p: packing.packed_nbytes(1.5, 3), TypeError, "count"),
    ("pack-float", lambda p: packing.pack(np.ones(3), 3), TypeError, "values"),
    ("pack-None", lambda p: packing.pack(None, 3), TypeError, "values"),
    ("pack-out-of-range", lambda p: packing.pack(np.array([0, 3]), 3), ValueError, "values"),
    ("pack-levels-huge", lambda p: packing.pack(np.array([0]), 2**40), ValueError, "levels"),
    ("unpack-int64", lambda p: packing.unpack(np.zeros(2, np.int64), 3, 3), TypeError, "words"),
    ("unpack-list", lambda p: packing.unpack([1, 2], 3, 2), TypeError, "words"),
    ("unpack-count-None", lambda p: packing.unpack(np.zeros(2, np.uint64), 3, None), TypeError,
     "count"),
    ("unpack-count-float", lambda p: packing.unpack(np.zeros(2, np.uint64), 3, 1.5), TypeError,
     "count"),
    ("unpack-count-too-big", lambda p: packing.unpack(np.zeros(1, np.uint64), 3, 41),
     ValueError, "count"),
    # layers
    ("expected_kernel_rank-None", lambda p: layers.expected_kernel_rank(None), TypeError,
     "module"),
    ("expected_kernel_rank-class", lambda p: layers.expected_kernel_rank(nn.Dense), TypeError,
     "module"),
    # models
    ("get_model-None", lambda p: get_model(None, 10), TypeError, "name"),
    ("get_model-unknown", lambda p: get_model("resnet7", 10), ValueError, "model"),
    ("get_model-num_classes-0", lambda p: get_model("resnet20", 0), ValueError, "num_classes"),
    ("get_model-num_classes-str", lambda p: get_model("resnet20", "10"), TypeError,
     "num_classes"),
    ("get_model-unknown-field", lambda p: get_model("resnet20", 10, widht=3), TypeError, "widht"),
    ("get_model-depth", lambda p: get_model("resnet20", 10, depth=32), ValueError, "depth"),
    ("get_model-dtype", lambda p: get_model("small_cnn", 10, dtype="float77"), TypeError,
     "dtype"),
    ("get_model-dtype-int", lambda p: get_model("small_cnn", 10, dtype=jnp.int8), ValueError,
     "dtype"),
    ("get_model-width", lambda p: get_model("small_cnn", 10, width=0), ValueError, "width"),
    ("get_model-dropout", lambda p: get_model("alexnet", 10, dropout_rate=1.5), ValueError,
     "dropout_rate"),
    ("get_model-zero_init", lambda p: get_model("resnet18", 10, zero_init_residual="yes"),
     TypeError, "zero_init_residual"),
    ("init_variables-model", lambda p: init_variables(None, KEY, (1, 8, 8, 1)), TypeError,
     "model"),
    ("init_variables-rng", lambda p: init_variables(get_model("small_cnn", 10), 0, (1, 8, 8, 1)),
     TypeError, "rng"),
    ("init_variables-shape-rank", lambda p: init_variables(get_model("small_cnn", 10), KEY,
                                                           (8, 8, 1)), ValueError, "input_shape"),
    ("init_variables-shape-negative", lambda p: init_variables(get_model("small_cnn", 10), KEY,
                                                               (1, -8, 8, 1)), ValueError,
     "input_shape"),
    ("init_variables-shape-int", lambda p: init_variables(get_model("small_cnn", 10), KEY, 8),
     TypeError, "input_shape"),
    ("init_variables-dtype", lambda p: init_variables(get_model("small_cnn", 10), KEY,
                                                      (1, 8, 8, 1), jnp.int8), ValueError,
     "dtype"),
    # data: loaders
    ("load_dataset-None", lambda p: data.load_dataset(None), TypeError, "name"),
    ("load_dataset-unknown", lambda p: data.load_dataset("mnist"), ValueError, "dataset"),
    ("load_dataset-kw", lambda p: data.load_dataset("digits", foo=1), TypeError, "foo"),
    ("load_dataset-data_dir", lambda p: data.load_dataset("cifar10", data_dir=5), TypeError,
     "data_dir"),
    ("load_digits-fraction", lambda p: data.load_digits(test_fraction=2), ValueError,
     "test_fraction"),
    ("load_digits-fraction-str", lambda p: data.load_digits(test_fraction="a"), TypeError,
     "test_fraction"),
    ("load_digits-seed", lambda p: data.load_digits(seed=-1), ValueError, "seed"),
    ("load_cifar10-data_dir", lambda p: data.load_cifar10(5), TypeError, "data_dir"),
    ("load_cifar10-source", lambda p: data.load_cifar10(p, source="web"), ValueError, "source"),
    ("read_cifar_folder-None", lambda p: data.read_cifar_folder(None), TypeError, "folder"),
    ("read_cifar_folder-counts", lambda p: data.read_cifar_folder(p, expected_counts=5),
     TypeError, "expected_counts"),
    ("download-root", lambda p: data.download_cifar10(5), TypeError, "root"),
    ("download-md5", lambda p: data.download_cifar10(p, md5=123), TypeError, "md5"),
    ("subset-list", lambda p: data.subset([1, 2], 3), TypeError, "ds"),
    ("subset-zero", lambda p: data.subset(DS, 0), ValueError, "n_train"),
    ("subset-float", lambda p: data.subset(DS, 1.5), TypeError, "n_train"),
    ("subset-n_test", lambda p: data.subset(DS, None, -2), ValueError, "n_test"),
    ("subset-seed", lambda p: data.subset(DS, 2, seed=-1), ValueError, "seed"),
    # data: augmentation
    ("normalize-list", lambda p: data.normalize([[1]], (0.5,), (0.2,)), TypeError, "images"),
    ("normalize-std-0", lambda p: data.normalize(IMAGES, (0.5,) * 3, (0.0,) * 3), ValueError,
     "std"),
    ("normalize-mean-len", lambda p: data.normalize(IMAGES, (0.5,) * 2, (0.2,) * 3), ValueError,
     "mean"),
    ("normalize-dtype", lambda p: data.normalize(IMAGES, (0.5,), (0.2,), jnp.int32), ValueError,
     "dtype"),
    ("crop_flip_params-rng", lambda p: data.crop_flip_params(0, 2), TypeError, "rng"),
    ("crop_flip_params-n", lambda p: data.crop_flip_params(KEY, -1), ValueError, "n"),
    ("crop_flip_params-pad", lambda p: data.crop_flip_params(KEY, 2, pad=-1), ValueError, "pad"),
    ("crop_flip_params-flip", lambda p: data.crop_flip_params(KEY, 2, flip="no"), TypeError,
     "flip"),
    ("apply_crop_flip-rank", lambda p: data.apply_crop_flip(
        IMAGES[0], jnp.zeros((1, 2), int), jnp.zeros(1, bool)), ValueError, "images"),
    ("apply_crop_flip-offsets", lambda p: data.apply_crop_flip(
        IMAGES, jnp.zeros((3, 2), int), jnp.zeros(2, bool)), ValueError, "offsets"),
    ("apply_crop_flip-flips", lambda p: data.apply_crop_flip(
        IMAGES, jnp.zeros((2, 2), int), jnp.zeros(3, bool)), ValueError, "flips"),
    ("random_crop_flip-pad", lambda p: data.random_crop_flip(KEY, IMAGES, pad=1.5), TypeError,
     "pad"),
    ("augment-images", lambda p: data.augment_and_normalize(KEY, IMAGES[0], (0.5,), (0.2,)),
     ValueError, "images"),
    ("augment-rng", lambda p: data.augment_and_normalize(None, IMAGES, (0.5,), (0.2,)),
     TypeError, "rng"),
    ("epoch_permutation-batch_size", lambda p: data.epoch_permutation(KEY, 10, 0), ValueError,
     "batch_size"),
    ("epoch_permutation-n", lambda p: data.epoch_permutation(KEY, 10.5, 2), TypeError, "n"),
    ("epoch_permutation-too-big", lambda p: data.epoch_permutation(KEY, 4, 8), ValueError,
     "batch_size"),
    # file safety
    ("write_text_atomic-path", lambda p: tern_jax.fs.write_text_atomic(None, "x"), TypeError,
     "path"),
    ("write_text_atomic-text", lambda p: tern_jax.fs.write_text_atomic(p / "a", b"x"),
     TypeError, "text"),
]


def _assert_ours(error: BaseException) -> None:
    """The error was raised by tern_jax, not by a library it calls."""
    frames = traceback.extract_tb(error.__traceback__)
    assert "tern_jax" in frames[-1].filename, f"raised in {frames[-1].filename}"


@pytest.mark.parametrize("call, error, argument", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_wrong_input_is_refused_naming_the_argument(tmp_path, call, error, argument):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused-rule warnings are not what is tested here
        with pytest.raises(error) as info:
            call(tmp_path)
    message = str(info.value)
    assert re.search(rf"(?<![\w]){re.escape(argument)}(?![\w])", message), message
    _assert_ours(info.value)


def test_the_wrong_inputs_cover_every_module():
    ids = " ".join(c[0] for c in CASES)
    for function in ("ternarize", "Rule", "quantize_params", "summary", "save", "load", "pack",
                     "unpack", "expected_kernel_rank", "get_model", "init_variables",
                     "load_dataset", "load_cifar10", "subset", "normalize",
                     "epoch_permutation", "write_text_atomic"):
        assert function in ids


# -- ranges: property tests --------------------------------------------------------------


def _refused(call, error, argument):
    with pytest.raises(error) as info:
        call()
    assert argument in str(info.value)
    _assert_ours(info.value)


@given(st.one_of(st.integers(max_value=1), st.integers(min_value=2**16 + 1)))
def test_levels_outside_2_to_65536_are_refused(levels):
    _refused(lambda: packing.values_per_word(levels), ValueError, "levels")


@given(st.integers(min_value=2, max_value=2**16))
def test_every_levels_in_range_packs_a_code_per_word_at_least(levels):
    k = packing.values_per_word(levels)
    assert k >= 1 and levels**k <= 2**64 < levels ** (k + 1)


@given(st.floats(allow_nan=False))
def test_a_float_count_is_refused(count):
    _refused(lambda: packing.packed_nbytes(count, 3), TypeError, "count")


@given(st.integers(max_value=-1))
def test_a_negative_count_is_refused(count):
    _refused(lambda: packing.unpack(np.zeros(1, np.uint64), 3, count), ValueError, "count")


@given(st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0)).filter(
    lambda f: not np.isnan(f)))
def test_test_fraction_outside_0_1_is_refused(fraction):
    _refused(lambda: data.load_digits(test_fraction=fraction), ValueError, "test_fraction")


@given(st.integers(max_value=0))
def test_subset_sizes_below_one_are_refused(n):
    _refused(lambda: data.subset(DS, n), ValueError, "n_train")
    _refused(lambda: data.subset(DS, None, n), ValueError, "n_test")


@given(st.integers(min_value=1, max_value=50))
def test_subset_keeps_min_of_n_and_the_set(n):
    assert data.subset(DS, n).num_train == min(n, DS.num_train)


@given(st.integers(max_value=0))
def test_num_classes_below_one_is_refused(num_classes):
    _refused(lambda: get_model("small_cnn", num_classes), ValueError, "num_classes")


@given(st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=64))
def test_epoch_permutation_accepts_exactly_batch_sizes_up_to_n(n, batch_size):
    if batch_size > n:
        _refused(lambda: data.epoch_permutation(KEY, n, batch_size), ValueError, "batch_size")
    else:
        shape = jax.eval_shape(lambda k: data.epoch_permutation(k, n, batch_size), KEY).shape
        assert shape == (n // batch_size, batch_size)


@given(st.one_of(st.floats(max_value=0.0, exclude_max=False), st.floats(min_value=1.0)).filter(
    lambda f: np.isfinite(f)))
def test_thresholds_outside_0_1_are_refused(threshold):
    _refused(lambda: tern_jax.ternarize(W, threshold=threshold), ValueError, "threshold")


# -- the real cause, named: what was passed and what is wrong with it ---------------------


def _tiny_lm():
    from flax import nnx

    from tern_jax.models.transformer import Transformer, transformer_config

    return Transformer(transformer_config("transformer_tiny"), rngs=nnx.Rngs(0))


def _params_as(dtype):
    from tern_jax.nnx_utils import param_dict

    return jax.tree.map(lambda a: np.asarray(a).astype(dtype), param_dict(_tiny_lm()))


def _tfds_without(module: str, monkeypatch):
    """tensorflow_datasets as installed without one of the modules it imports."""
    import types

    def data_source(*args, **kwargs):
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        types.SimpleNamespace(data_source=data_source))
    from tern_jax.data.text import load_text

    return load_text("tiny_shakespeare", data_dir=f"/nonexistent/{module}")


def _presets(family):
    if family == "cnn":
        from tern_jax.presets import PRESETS

        return PRESETS
    from tern_jax.presets import TRANSFORMER_RULES

    return TRANSFORMER_RULES


# (id, call(monkeypatch), exception type, texts the message must hold, texts it must not)
REAL_CAUSES = [
    ("rules-preset-dict", lambda m: tern_jax.quantize_params(PARAMS, _presets("cnn")), TypeError,
     ["you passed a dict of presets; pick one", "rules['tern']"], []),
    ("rules-lm-preset-dict", lambda m: tern_jax.quantize_params(PARAMS, _presets("lm")),
     TypeError, ["you passed a dict of presets; pick one"], ["got str"]),
    ("rules-axis-tuple-for-a-dense-kernel",
     lambda m: tern_jax.quantize_params(PARAMS, tern_jax.Rule(r".*kernel", axis=(1, 2))),
     ValueError, ["Rule('.*kernel', axis=(1, 2))", "'dense/kernel'", "shape (8, 4)"], []),
    ("summary-axis-for-a-dense-kernel", lambda m: tern_jax.summary(
        PARAMS, tern_jax.Rule(r".*kernel", axis=3), print_fn=None), ValueError,
     ["axis=3", "'dense/kernel'"], []),
    ("Rule-threshold-times-t_ex", lambda m: tern_jax.Rule(".*", threshold=0.6, t_ex=2),
     ValueError, ["threshold=0.6", "t_ex=2", "below 0.5"], ["threshold 1.2 is outside"]),
    ("ternarize-threshold-times-t_ex", lambda m: tern_jax.ternarize(W, threshold=0.3, t_ex=4),
     ValueError, ["threshold=0.3", "t_ex=4"], ["threshold 1.2 is outside"]),
    ("ternarize-default-threshold-times-t_ex", lambda m: tern_jax.ternarize(W, t_ex=20),
     ValueError, ["default threshold 0.05", "t_ex=20"], []),
    ("tiny_shakespeare-missing-module", lambda m: _tfds_without("importlib_resources", m),
     FileNotFoundError, ["'importlib_resources'", "pip install importlib-resources"],
     ["needs a download"]),
    ("with_params-int-weights", lambda m: tern_jax.nnx_utils.with_params(
        _tiny_lm(), _params_as(np.int32)), TypeError, ["dtype int32", "float32"], []),
    ("with_params-bfloat16-weights", lambda m: tern_jax.nnx_utils.with_params(
        _tiny_lm(), _params_as(jnp.bfloat16)), TypeError, ["dtype bfloat16", "float32"], []),
    ("with_params-weights-as-lists", lambda m: tern_jax.nnx_utils.with_params(
        _tiny_lm(), jax.tree.map(lambda a: np.asarray(a).tolist(), _params_as(np.float32))),
     TypeError, ["is a list, not an array", "np.asarray"], ["is missing"]),
    ("with_params-a-checkpoints-whole-tree", lambda m: tern_jax.nnx_utils.with_params(
        _tiny_lm(), {"params": _params_as(np.float32), "batch_stats": {}}), ValueError,
     ["lacks parameter", "pass its ['params']"], []),
    ("transformer-token-above-vocab", lambda m: _tiny_lm()(jnp.array([[1, 300]])), ValueError,
     ["tokens must lie in [0, 256)", "[1, 300]"], []),
    ("transformer-negative-token", lambda m: _tiny_lm()(jnp.array([[-1, 7]])), ValueError,
     ["tokens must lie in [0, 256)", "[-1, 7]"], []),
    ("generate-token-above-vocab", lambda m: __import__(
        "tern_jax.models.transformer", fromlist=["generate"]).generate(
        _tiny_lm(), np.array([65, 300]), steps=2, key=KEY), ValueError,
     ["prompt tokens must lie in [0, 256)"], []),
    ("eval_windows-token-above-vocab", lambda m: tern_jax.data.text.eval_windows(
        np.array([1, 2, 300, 4, 5], np.int32), 2), ValueError, ["[0, 256)", "[1, 300]"], []),
    ("DeviceText-negative-token", lambda m: _device_text(np.array([1, -1, 3, 4, 5], np.int32)),
     ValueError, ["[-1, 5]"], []),
    ("Rule-full-precision-with-t_ex", lambda m: tern_jax.Rule(".*", None, t_ex=3), ValueError,
     ["method=None", "t_ex=3 would be ignored"], []),
    ("quantize_params-nested-rules", lambda m: tern_jax.quantize_params(
        PARAMS, [(tern_jax.Rule(r".*kernel"),)]), TypeError, ["nested sequence", "flatten"], []),
    ("quantize_params-pattern-string", lambda m: tern_jax.quantize_params(PARAMS, [r".*kernel"]),
     TypeError, ["tern_jax.Rule('.*kernel')"], []),
    ("quantize_params-stacked-str", lambda m: tern_jax.quantize_params(PARAMS, stacked="yes"),
     TypeError, ["stacked", "'yes'"], []),
    ("DeviceText-float-text", lambda m: _device_text(np.ones(8, np.float32)), TypeError,
     ["dtype float32"], []),
]

def _device_text(train):
    """A byte corpus of training split ``train`` (valid validation bytes) as training inputs."""
    from jax.sharding import Mesh

    from tern_jax.data.inputs import DeviceText
    from tern_jax.data.text import TextDataset

    data = TextDataset(train, np.arange(1, 9, dtype=np.uint8), "bad", "a test corpus")
    return DeviceText(data, seeds=[0], seq_len=2, batch_size=2, eval_batch_size=2,
                      steps_per_epoch=None, test_subset=None,
                      mesh=Mesh(np.array(jax.devices()[:1]), ("data",)))


@pytest.mark.parametrize("call, error, present, absent", [
    pytest.param(*c[1:], id=c[0]) for c in REAL_CAUSES])
def test_a_wrong_input_is_refused_naming_the_real_cause(monkeypatch, call, error, present,
                                                        absent):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info:
            call(monkeypatch)
    message = str(info.value)
    for text in present:
        assert text in message, message
    for text in absent:
        assert text not in message, message
    _assert_ours(info.value)


def test_the_transformer_gives_the_same_logits_eagerly_and_under_jit():
    """The eager range check changes nothing for tokens in range."""
    from flax import nnx

    model = _tiny_lm()
    tokens = jnp.array([[0, 65, 255, 10]])
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens)
    np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(jitted), rtol=1e-5, atol=1e-5)


def test_with_params_takes_the_models_own_weights_back_unchanged():
    from tern_jax.nnx_utils import param_dict, with_params

    model = _tiny_lm()
    weights = param_dict(model)
    again = param_dict(with_params(model, weights))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 weights, again)
