"""Sharding rules and the mesh (tern_jax.sharding) and the config's sharding section.

Everything here reads shapes only (``jax.eval_shape``, an ``AbstractMesh``), so it runs in
this process on one device; the runs on 8 devices are in ``test_sharded_training.py``.
"""

import dataclasses
import warnings

import jax
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from tern_jax import UnusedRuleWarning
from tern_jax import sharding as sh
from tern_jax.models import get_model
from tern_jax.models.transformer import Transformer, transformer_config
from tern_jax.train import ShardingConfig, Trainer, override, quickstart_config
from tern_jax.train.config import from_json


def _mesh(data=1, fsdp=1, tensor=1):
    return AbstractMesh((data, fsdp, tensor), sh.MESH_AXES)


def _by_path(specs) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): spec
            for path, spec in leaves}


@pytest.fixture(scope="module")
def lm_params():
    config = transformer_config("transformer_tiny", d_model=32, num_heads=4, num_layers=1)
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def resnet_variables():
    model = get_model("resnet20", 10, width=8)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 8, 8, 3))))


def test_mesh_sizes_fill_the_data_axis_and_refuse_a_wrong_product():
    assert sh.mesh_shape(ShardingConfig(), 8) == (8, 1, 1)
    assert sh.mesh_shape(ShardingConfig(fsdp=4), 8) == (2, 4, 1)
    assert sh.mesh_shape(ShardingConfig(fsdp=2, tensor=2, data=2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match=r"sharding.data=2 x sharding.fsdp=2 x "
                       r"sharding.tensor=1 = 4 devices, but the run has 8"):
        sh.mesh_shape(ShardingConfig(data=2, fsdp=2), 8)
    with pytest.raises(ValueError, match="= 3 does not divide the 8 device"):
        sh.mesh_shape(ShardingConfig(fsdp=3), 8)
    mesh = sh.make_mesh(ShardingConfig(), jax.devices()[:1])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_a_trainer_on_too_few_devices_stops_before_compiling():
    config = override(quickstart_config(), {"sharding.fsdp": 8, "progress": False})
    with pytest.raises(ValueError, match="= 8 does not divide the 1 device"):
        Trainer(config, devices=jax.devices()[:1])


def test_transformer_defaults_split_heads_and_hidden_over_tensor_and_d_over_fsdp(lm_params):
    specs = _by_path(sh.param_specs(lm_params, sh.TRANSFORMER_SHARDING, _mesh(1, 4, 2),
                                    strict=False, unused="ignore"))
    assert specs["embed/embedding"] == P("tensor", "fsdp")
    assert specs["blocks/0/attn/query/kernel"] == P("fsdp", "tensor")
    assert specs["blocks/0/attn/out/kernel"] == P("tensor", None, "fsdp")
    assert specs["blocks/0/mlp/up/kernel"] == P("fsdp", "tensor")
    assert specs["blocks/0/mlp/down/kernel"] == P("tensor", "fsdp")
    assert specs["head/kernel"] == P("fsdp", "tensor")
    assert specs["blocks/0/attn_norm/scale"] == P()
    assert specs["final_norm/scale"] == P()
    # a scanned stack of blocks (a leading layer axis) takes the same split after it
    scanned = {"blocks": {"mlp": {"up": {"kernel": jax.ShapeDtypeStruct((3, 32, 128),
                                                                         "float32")}}}}
    got = sh.param_specs(scanned, sh.TRANSFORMER_SHARDING, _mesh(1, 4, 2), unused="ignore")
    assert got["blocks"]["mlp"]["up"]["kernel"] == P(None, "fsdp", "tensor")


def test_cnn_defaults_split_channels_and_leave_what_they_cannot_divide(resnet_variables):
    mesh = _mesh(1, 8, 1)
    params = _by_path(sh.param_specs(resnet_variables["params"], sh.CNN_SHARDING, mesh,
                                     strict=False, unused="ignore"))
    assert params["stem_conv/kernel"] == P(None, None, None, "fsdp")
    assert params["stage3_block2/conv2/kernel"] == P(None, None, None, "fsdp")
    assert params["stem_bn/scale"] == P("fsdp")
    assert params["head/kernel"] == P("fsdp")  # (32, 10): 10 classes stay whole
    assert params["head/bias"] == P()  # 10 is not divisible by 8
    stats = _by_path(sh.param_specs(resnet_variables["batch_stats"], sh.CNN_SHARDING, mesh,
                                    strict=False, unused="ignore"))
    assert stats["stage2_block0/bn1/mean"] == P("fsdp")
    # fsdp x tensor = 16 does not divide 8 channels: the longest prefix that does, fsdp (4)
    mesh = _mesh(1, 4, 4)
    params = _by_path(sh.param_specs(resnet_variables["params"], sh.CNN_SHARDING, mesh,
                                     strict=False, unused="ignore"))
    assert params["stem_conv/kernel"] == P(None, None, None, "fsdp")
    assert params["stage3_block0/conv1/kernel"] == P(None, None, None, ("fsdp", "tensor"))


def test_first_rule_that_applies_wins_and_rank_is_part_of_applying(resnet_variables):
    rules = ((r".*/kernel", ("fsdp", None)),  # rank 2: the dense kernel only
             ("stem_conv/kernel", None),
             (r".*/kernel", (None, None, "fsdp", None)))
    specs = _by_path(sh.param_specs(resnet_variables["params"], rules, _mesh(1, 2, 1)))
    assert specs["head/kernel"] == P("fsdp")
    assert specs["stem_conv/kernel"] == P()
    assert specs["stage1_block0/conv1/kernel"] == P(None, None, "fsdp")
    with pytest.raises(ValueError) as info:  # 3 input channels of the stem: strict refuses
        sh.param_specs(resnet_variables["params"], rules[2:], _mesh(1, 2, 1))
    assert str(info.value).startswith(
        "sharding rule splits dimension 2 (size 3) of parameter 'stem_conv/kernel' of shape "
        "(3, 3, 3, 8) over mesh axis fsdp (2), which does not divide it")


def test_bad_rules_are_named_one_line_each():
    params = {"dense": {"kernel": jax.ShapeDtypeStruct((16, 10), "float32")}}
    mesh = _mesh(1, 4, 2)
    with pytest.raises(ValueError, match=r"sharding rule '.\*': unknown mesh axis 'model'; "
                       "the mesh's axes are 'data', 'fsdp', 'tensor'"):
        sh.param_specs(params, ((".*", ("model", None)),), mesh)
    with pytest.raises(ValueError, match="axis 'fsdp' appears twice"):
        sh.param_specs(params, ((".*", ("fsdp", "fsdp")),), mesh)
    with pytest.raises(ValueError, match="not a regular expression"):
        sh.param_specs(params, (("(", None),), mesh)
    with pytest.raises(TypeError, match=r"\(pattern, spec\) pair"):
        sh.param_specs(params, (".*",), mesh)
    with pytest.raises(ValueError, match=r"dimension 1 \(size 10\) of parameter "
                       r"'dense/kernel' of shape \(16, 10\) over mesh axis tensor \(4\)"):
        sh.param_specs(params, ((".*", (None, ("tensor",))),), _mesh(1, 1, 4))
    with pytest.warns(UnusedRuleWarning, match=r"rules matched no parameter: \['conv/.\*'\]"):
        sh.param_specs(params, (("conv/.*", None), (".*", ("fsdp", None))), mesh)
    with pytest.raises(ValueError, match="rules matched no parameter"):
        sh.param_specs(params, (("conv/.*", None),), mesh, unused="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sh.param_specs(params, (("conv/.*", None),), mesh, unused="ignore") == {
            "dense": {"kernel": P()}}


def test_model_axis_is_unsplit_or_split_on_request():
    params = {"w": jax.ShapeDtypeStruct((4, 16, 8), "float32")}  # 4 stacked models
    rules = (("w", ("fsdp", None)),)
    mesh = _mesh(2, 2, 2)
    assert sh.param_specs(params, rules, mesh, stacked=True)["w"] == P(None, "fsdp")
    assert sh.param_specs(params, rules, mesh, stacked=True, model_axis="data")["w"] == P(
        "data", "fsdp")
    with pytest.raises(ValueError, match="over axis 'fsdp', which sharding.model_axis gives"):
        sh.param_specs(params, rules, mesh, stacked=True, model_axis="fsdp")
    with pytest.raises(ValueError, match="splits the 4 stacked models over 8 devices"):
        sh.param_specs(params, (), AbstractMesh((8, 1, 1), sh.MESH_AXES), stacked=True,
                       model_axis="data")
    with pytest.raises(ValueError, match="pass stacked=True"):
        sh.param_specs(params, rules, mesh, model_axis="data")


def test_optimizer_states_mirror_the_parameters_and_counts_are_replicated():
    params = {"a": {"kernel": jax.ShapeDtypeStruct((2, 16, 8), "float32")},
              "b": {"bias": jax.ShapeDtypeStruct((2, 8), "float32")}}
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-3))
    opt_state = jax.eval_shape(jax.vmap(tx.init), params)
    rules = ((r".*/kernel", ("fsdp", "tensor")),)
    p, s, o = sh.state_specs(params, {}, opt_state, rules, _mesh(1, 4, 2), tx=tx, stacked=True)
    assert p == {"a": {"kernel": P(None, "fsdp", "tensor")}, "b": {"bias": P(None)}}
    adam = o[1][0]
    assert adam.mu == p and adam.nu == p
    assert adam.count == P()
    assert s == {}


def test_the_config_section_takes_set_values_and_round_trips():
    config = override(quickstart_config(), ["sharding.fsdp=8", "sharding.model_axis=data",
                                            'sharding.rules=[[".*/kernel", ["fsdp", null]], '
                                            '["head/.*", null], ["x", [["fsdp", "tensor"]]]]'])
    assert config.sharding == ShardingConfig(
        fsdp=8, model_axis="data",
        rules=((".*/kernel", ("fsdp", None)), ("head/.*", None), ("x", (("fsdp", "tensor"),))))
    assert from_json(config.to_json()) == config
    assert override(config, ["sharding.rules=none"]).sharding.rules is None
    with pytest.raises(ValueError, match="sharding.rules 'x': unknown mesh axis 'model'"):
        ShardingConfig(rules=(("x", ("model",)),))
    with pytest.raises(ValueError, match="sharding.model_axis must be 'data', 'fsdp' or "
                       "'tensor'"):
        ShardingConfig(model_axis="model")
    with pytest.raises(ValueError, match=r"sharding.fsdp must be an integer >= 1"):
        override(quickstart_config(), ["sharding.fsdp=0"])
    with pytest.raises(ValueError, match="bad value for sharding.rules"):
        override(quickstart_config(), ["sharding.rules=[.*"])
    with pytest.raises(TypeError, match=r"sharding.rules must be \(pattern, spec\) pairs"):
        ShardingConfig(rules=(".*",))
    assert dataclasses.asdict(ShardingConfig()) == {
        "data": 0, "fsdp": 1, "tensor": 1, "rules": None, "model_axis": None,
        "gather": "weights"}
