"""Ternary kernels gathered as codes under FSDP (tern_jax.gather): packing, refusals, HLO
reading here; exactness, gradients, training and all-gather bytes on 8 devices in one
subprocess."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.runs import command
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from tern_jax import core
from tern_jax.gather import (
    GatherPlan,
    all_gathers,
    bits_per_level,
    gather_bytes_by_dtype,
    gathered_ternarize,
    pack_levels,
    quantize_params_gathered,
    unpack_levels,
)


@pytest.mark.parametrize("t_ex,bits", [(1, 2), (2, 4), (3, 4), (7, 4), (8, 8)])
def test_pack_levels_round_trips_with_its_bits(t_ex, bits):
    assert bits_per_level(t_ex) == bits
    levels = np.random.default_rng(t_ex).integers(-t_ex, t_ex + 1, (7, 5)).astype(np.int8)
    packed = pack_levels(levels, t_ex)
    assert packed.dtype == jnp.uint8 and packed.size == -(-35 * bits // 8)
    np.testing.assert_array_equal(unpack_levels(packed, t_ex, 35), levels.reshape(-1))
    # leading axes (one row per device, as gathered) are kept
    two = jnp.stack([packed, pack_levels(-levels, t_ex)])
    np.testing.assert_array_equal(unpack_levels(two, t_ex, 35)[1], -levels.reshape(-1))


def test_bits_per_level_refuses_a_non_positive_t_ex():
    with pytest.raises(ValueError, match="t_ex must be a positive integer"):
        bits_per_level(0)


HLO = """
  %all-gather.1 = f32[64,32]{1,0} all-gather(f32[8,32]{1,0} %p.1), channel_id=1, \
replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  %all-gather.2 = (s8[64,32]{1,0}, u8[8,64]{1,0}) all-gather(s8[8,32]{1,0} %a, \
u8[1,64]{1,0} %b), channel_id=2, replica_groups=[1,8]<=[8], dimensions={0,0}
  %add.3 = f32[4]{0} add(f32[4]{0} %x, f32[4]{0} %y)
  %all-gather = f32[1,256,32]{2,0,1} all-gather(%add.3), channel_id=9, \
replica_groups=mesh['axis_0'=1,'axis_1'=4], device_ids=([2,4]T(1,0)) {'axis_1'}, dimensions={1}
"""


def test_all_gathers_reads_shapes_types_and_bytes():
    first, second, third = all_gathers(HLO)
    assert first.dtype == "f32" and first.result_shapes == ((64, 32),)
    assert first.operand_bytes == 8 * 32 * 4 and first.received_bytes == 56 * 32 * 4
    assert second.dtype == "s8/u8" and second.operand_shapes == ((8, 32), (1, 64))
    assert second.result_bytes == 64 * 32 + 8 * 64
    # operands printed without their types: read from their definitions
    assert third.operand_shapes == ((4,),) and third.result_bytes == 256 * 32 * 4
    assert gather_bytes_by_dtype([first, second]) == {"f32": 56 * 32 * 4,
                                                      "s8/u8": 56 * 32 + 7 * 64}


def test_all_gathers_refuses_a_line_it_cannot_read():
    with pytest.raises(ValueError, match="not defined in the module"):
        all_gathers("%g = f32[8]{0} all-gather(%x), dimensions={0}")
    with pytest.raises(ValueError, match="cannot read"):
        all_gathers("  all-gather(%x)")


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


@pytest.mark.parametrize("spec,shape,match", [
    (P("fsdp", "fsdp"), (8, 8), "names the same"),
    (P("model"), (8, 8), "does not have"),
    (P("fsdp", None, None), (8, 8), "3 entries for a weight of rank 2"),
])
def test_refused_layouts_name_the_problem(mesh, spec, shape, match):
    w = jnp.ones(shape)
    with pytest.raises((ValueError, TypeError), match=match):
        gathered_ternarize(w, mesh=mesh, spec=spec)


def test_two_gathered_dimensions_are_refused():
    devices = np.array(jax.devices()[:1]).reshape(1, 1, 1, 1)
    mesh = Mesh(devices, ("data", "fsdp", "fsdp2", "tensor"))
    with pytest.raises(ValueError, match="one split dimension per weight"):
        gathered_ternarize(jnp.ones((4, 4)), mesh=mesh, spec=P("fsdp", "fsdp2"),
                           gather_axes=("fsdp", "fsdp2"))


def test_refused_modes_and_plans(mesh):
    with pytest.raises(ValueError, match="mode must be one of"):
        gathered_ternarize(jnp.ones((4, 4)), mesh=mesh, spec=P("fsdp"), mode="int4")
    with pytest.raises(ValueError, match="not axes of the mesh"):
        GatherPlan(mesh, {}, "codes", ("zero",))
    with pytest.raises(TypeError, match="map parameter paths to PartitionSpecs"):
        GatherPlan(mesh, {"a/kernel": ("fsdp",)})


@pytest.mark.parametrize("mode", ["codes", "packed"])
def test_one_device_equals_ternarize_and_its_gradient(mesh, mode):
    """On a one-device mesh the collectives are trivial: the same function and gradient."""
    w = jax.random.normal(jax.random.key(1), (16, 12)) * 0.7
    kwargs = {"t_ex": 2, "axis": -1}
    fn = jax.jit(lambda w: gathered_ternarize(w, mesh=mesh, spec=P("fsdp"), mode=mode,
                                              **kwargs))
    np.testing.assert_array_equal(fn(w), core.ternarize(w, **kwargs))
    probe = jax.random.normal(jax.random.key(2), w.shape)
    grad = jax.grad(lambda w: jnp.sum(fn(w) * probe))(w)
    ref = jax.grad(lambda w: jnp.sum(core.ternarize(w, **kwargs) * probe))(w)
    np.testing.assert_array_equal(grad, ref)


def test_plan_over_a_pytree_matches_quantize_params(mesh):
    from tern_jax.rules import Rule, quantize_params

    params = {"dense": {"kernel": jax.random.normal(jax.random.key(3), (8, 4)),
                        "bias": jnp.ones(4)}}
    rules = (Rule(r".*/kernel", t_ex=2),)
    plan = GatherPlan.from_specs(mesh, {"dense": {"kernel": P("fsdp"), "bias": P()}}, "packed")
    got = jax.jit(lambda p: quantize_params_gathered(p, rules, plan))(params)
    want = quantize_params(params, rules)
    np.testing.assert_array_equal(got["dense"]["kernel"], want["dense"]["kernel"])
    np.testing.assert_array_equal(got["dense"]["bias"], params["dense"]["bias"])


@pytest.fixture(scope="module")
def eight_devices():
    """Every 8-device check, run once in one subprocess (tests/helpers/gather_check.py)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    out = subprocess.run(command("from helpers.gather_check import print_checks; "
                                 "print_checks()"),
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    return result


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", ["quantizer", "quantizer_tp"])
def test_gathered_codes_are_ternarize_of_the_whole_tensor(eight_devices, mesh_name):
    """Split over 4 fsdp devices (x 2 tensor), codes, packed codes and the fp32 baseline: the
    same codes as one device, alpha to float rounding, and the straight-through gradient
    exactly, in the weight's own sharding."""
    cases = eight_devices[mesh_name]
    assert len(cases) >= 21
    for name, case in cases.items():
        exact_threshold = not name.startswith(("twn", "absmean"))
        if exact_threshold:
            assert case["same_codes"], name
        assert case["value_diff"] <= 2e-6 * case["value_scale"], (name, case)
        if exact_threshold:
            assert case["grad_diff"] == 0.0, (name, case)
        assert case["grad_sharded_like_w"], name


@pytest.mark.slow
@pytest.mark.parametrize("runs", ["training", "training_mixed"])
def test_fsdp_training_with_code_gathers_equals_plain_fsdp(eight_devices, runs):
    """The trainer with sharding.gather (two Adam steps of a one-layer tiny transformer, tern,
    2 x 4 FSDP), and three steps of model stacks under 4 x 2 FSDP x tensor (fp, tern_pc and
    tern_t2 side by side): gathering codes gives the losses and weights of gathering the fp32
    weights. (Adam divides by the gradient's root mean square, so float-rounding differences
    of a near-zero gradient reach the weights
amplified: the weights to 5e-5, with a learning rate of 3e-3.)"""
    result = eight_devices[runs]
    if runs == "training":  # the trainer planned the gathers from sharding.gather
        assert [r["planned"] for r in result.values()] == [False, True, True]
    for mode, run in result.items():
        assert run["loss_diff"] <= 1e-5, (mode, run)
        assert run["weight_diff"] <= 5e-5, (mode, run)


@pytest.mark.slow
def test_code_gathers_move_4x_and_16x_fewer_bytes(eight_devices):
    """From the trainer's compiled step (the default transformer sharding, 4-way fsdp, 64
    windows a step): no fp32
    gather of a ternary kernel is left, and all the step's all-gathers together move >= 4x
    fewer bytes with int8 codes, >= 12x packed, than gathering every ternary kernel's fp32
    weights once (what FSDP's weight gathers move)."""
    run = eight_devices["training"]
    assert run["weights"]["gather_bytes"]["fp32_kernel"] > 0  # the reader finds kernels
    for mode, factor in (("codes", 4), ("packed", 12)):
        gathered = run[mode]["gather_bytes"]
        assert gathered["fp32_kernel"] == 0, (mode, gathered)
        assert gathered["codes"] > 0, (mode, gathered)
        assert run[mode]["fp32_baseline"] >= factor * sum(gathered.values()), (mode, gathered)


def test_sharding_config_takes_a_gather_mode_and_refuses_a_split_model_axis():
    from tern_jax.train.config import ShardingConfig

    assert ShardingConfig().gather == "weights"
    assert ShardingConfig(fsdp=8, gather="packed").gather == "packed"
    with pytest.raises(ValueError, match="gather"):
        ShardingConfig(gather="bits")
    with pytest.raises(ValueError, match="sharding.model_axis=None"):
        ShardingConfig(fsdp=2, gather="codes", model_axis="data")


def test_from_stacked_strips_the_model_axis_and_refuses_a_split_one(mesh):
    from jax.sharding import NamedSharding

    specs = {"a": {"kernel": NamedSharding(mesh, P(None, "fsdp")), "scale": P()}}
    plan = GatherPlan.from_stacked(mesh, specs, "codes")
    assert plan.spec("a/kernel") == P("fsdp") and plan.spec("a/scale") == P()
    with pytest.raises(ValueError, match="model axis is split"):
        GatherPlan.from_stacked(mesh, {"k": P("data", "fsdp")})
