"""Tests of the grain input pipeline (tern_jax.data.pipeline) on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("grain")

from helpers.images import jpeg

from tern_jax.data.augment import normalize
from tern_jax.data.imagenet import EvalTransform, TrainTransform, eval_transform, train_transform
from tern_jax.data.pipeline import (
    ArraySource,
    batch_dataset,
    batch_iterator,
    batch_plan,
    example_index,
)


def _indexed_source(n: int) -> ArraySource:
    """Images whose pixels hold their own index (mod 256); label = index."""
    images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None],
                             (n, 4, 4, 3)).copy()
    return ArraySource(images, np.arange(n))


class _AddNoise:
    """A random per-image transform (picklable): adds rng draws to the image."""

    def __call__(self, image, rng):
        return (np.asarray(image, np.int32) + rng.integers(0, 50, size=image.shape)).astype(
            np.uint8)


def _labels(dataset) -> list[list[int]]:
    return [list(dataset[k][1]) for k in range(len(dataset))]


# --------------------------------------------------------------------------------------
# sharding arithmetic
# --------------------------------------------------------------------------------------


def test_batch_plan_positions_partition_each_global_batch() -> None:
    plans = [batch_plan(50, 4, shard_index=p, num_shards=3) for p in range(3)]
    assert plans[0].global_batch_size == 12 and plans[0].steps_per_epoch == 4  # 50 // 12
    for step in range(4):
        np.testing.assert_array_equal(
            np.concatenate([plan.positions(step) for plan in plans]),
            np.arange(12 * step, 12 * step + 12))
    np.testing.assert_array_equal(plans[2].positions(1), [20, 21, 22, 23])
    padded = batch_plan(50, 4, shard_index=2, num_shards=3, drop_remainder=False)
    assert padded.steps_per_epoch == 5  # ceil(50 / 12): positions 48..59, 50.. are padding
    np.testing.assert_array_equal(padded.positions(4), [56, 57, 58, 59])
    with pytest.raises(IndexError, match="step 4"):
        plans[0].positions(4)


def test_batch_plan_rejects_empty_shards_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fewer than one global batch of 16.*empty shard"):
        batch_plan(10, 8, shard_index=0, num_shards=2)
    with pytest.raises(ValueError, match="shard_index must lie in \\[0, 2\\).*got 2"):
        batch_plan(100, 8, shard_index=2, num_shards=2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        batch_plan(100, 0, shard_index=0, num_shards=1)
    with pytest.raises(ValueError, match="num_shards must be a positive integer, got 0"):
        batch_plan(100, 4, shard_index=0, num_shards=0)
    with pytest.raises(ValueError, match="holds 0 examples"):
        batch_plan(0, 4, shard_index=0, num_shards=1, drop_remainder=False)


def test_default_shard_is_this_jax_process() -> None:
    plan = batch_plan(40, 4)
    assert (plan.shard_index, plan.num_shards) == (0, 1)


# --------------------------------------------------------------------------------------
# order, augmentation, sharding of the batches
# --------------------------------------------------------------------------------------


def test_each_epoch_is_a_seeded_permutation() -> None:
    ds = batch_dataset(_indexed_source(24), 8, shuffle=True, seed=5, num_epochs=2,
                       shard_index=0, num_shards=1)
    assert len(ds) == 6
    labels = _labels(ds)
    first, second = sum(labels[:3], []), sum(labels[3:], [])
    assert sorted(first) == list(range(24)) and sorted(second) == list(range(24))
    assert first != second and first != list(range(24))
    assert first == [example_index(q, 0, 24, seed=5, shuffle=True) for q in range(24)]
    other_seed = batch_dataset(_indexed_source(24), 8, shuffle=True, seed=6, num_epochs=1,
                               shard_index=0, num_shards=1)
    assert sum(_labels(other_seed), []) != first
    in_order = batch_dataset(_indexed_source(24), 8, shuffle=False, num_epochs=1,
                             shard_index=0, num_shards=1)
    assert sum(_labels(in_order), []) == list(range(24))
    later = batch_dataset(_indexed_source(24), 8, shuffle=True, seed=5, num_epochs=1,
                          start_epoch=1, shard_index=0, num_shards=1)
    assert sum(_labels(later), []) == second


def test_global_batch_does_not_depend_on_the_process_count() -> None:
    source = _indexed_source(40)
    kw = dict(shuffle=True, seed=1, num_epochs=2, transform=_AddNoise())
    single = batch_dataset(source, 12, shard_index=0, num_shards=1, **kw)
    shards = [batch_dataset(source, 4, shard_index=p, num_shards=3, **kw) for p in range(3)]
    assert len(single) == len(shards[0]) == 6  # 2 epochs x 40 // 12
    for k in range(len(single)):
        images, labels = single[k]
        parts = [shard[k] for shard in shards]
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), labels)
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), images)
    # each process read a third of each epoch, disjoint from the others
    epoch0 = [set(sum(_labels(shard)[:3], [])) for shard in shards]
    assert all(len(s) == 12 for s in epoch0) and len(set.union(*epoch0)) == 36


def test_augmentation_draws_from_seed_epoch_and_example() -> None:
    source = _indexed_source(16)
    ds = batch_dataset(source, 4, shuffle=True, seed=7, num_epochs=2, transform=_AddNoise(),
                       shard_index=0, num_shards=1)
    images, labels = ds[5]  # epoch 1, second batch
    for image, i in zip(images, labels):
        expected = _AddNoise()(source[int(i)]["image"], np.random.default_rng([7, 1, int(i)]))
        np.testing.assert_array_equal(image, expected)


def test_padded_batches_mask_the_padding_on_every_process() -> None:
    source = _indexed_source(10)
    shards = [batch_dataset(source, 4, shuffle=False, drop_remainder=False, pad_remainder=True,
                            shard_index=p, num_shards=2) for p in range(2)]
    assert len(shards[0]) == len(shards[1]) == 2  # ceil(10 / 8)
    images, labels, mask = shards[1][1]  # positions 12..15: all padding
    assert images.shape == (4, 4, 4, 3) and not images.any()
    np.testing.assert_array_equal(mask, [0, 0, 0, 0])
    images, labels, mask = shards[0][1]  # positions 8..11: two real examples
    np.testing.assert_array_equal(labels, [8, 9, 0, 0])
    np.testing.assert_array_equal(mask, [1, 1, 0, 0])
    real = sum(float(shard[k][2].sum()) for shard in shards for k in range(2))
    assert real == 10


def test_cifar_arrays_stream_normalized() -> None:
    """The streamed path for in-memory arrays (CIFAR): batches equal normalized gathers."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=20)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    ds = batch_dataset(ArraySource(images, labels), 8, shuffle=True, seed=2, dtype=np.float32,
                       mean=mean, std=std, shard_index=0, num_shards=1)
    out_images, out_labels = ds[1]
    order = [example_index(q, 0, 20, seed=2, shuffle=True) for q in range(8, 16)]
    np.testing.assert_array_equal(out_labels, labels[order])
    np.testing.assert_allclose(out_images, (images[order] / 255.0 - mean) / std, rtol=1e-5,
                               atol=1e-5)
    assert out_images.dtype == np.float32
    np.testing.assert_allclose(normalize(np.full((1, 1, 1, 3), 255, np.uint8), mean, std),
                               ((1 - np.array(mean)) / std)[None, None, None], rtol=1e-6)


def test_host_and_device_normalize_give_the_same_numbers() -> None:
    """One normalize: the streamed (NumPy, host) and in-memory (JAX, device) paths agree."""
    import jax.numpy as jnp

    images = np.random.default_rng(1).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    host = normalize(images, mean, std)
    device = normalize(jnp.asarray(images), mean, std)
    assert isinstance(host, np.ndarray) and host.dtype == np.float32
    np.testing.assert_allclose(host, np.asarray(device), rtol=1e-6, atol=1e-6)


def test_bad_pipeline_arguments() -> None:
    source = _indexed_source(16)
    with pytest.raises(ValueError, match="dtype=float32 normalizes.*mean and std"):
        batch_dataset(source, 4, shuffle=False, dtype=np.float32, shard_index=0, num_shards=1)
    with pytest.raises(ValueError, match="at most one of drop_remainder"):
        batch_dataset(source, 4, shuffle=False, pad_remainder=True, shard_index=0, num_shards=1)
    with pytest.raises(ValueError, match="with 2 processes a final partial batch"):
        batch_dataset(source, 4, shuffle=False, drop_remainder=False, shard_index=0,
                      num_shards=2)
    with pytest.raises(ValueError, match="num_epochs must be positive"):
        batch_dataset(source, 4, shuffle=False, num_epochs=0, shard_index=0, num_shards=1)
    with pytest.raises(ValueError, match="same number of examples.*\\(3, 2\\).*\\(4,\\)"):
        ArraySource(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="num_workers"):
        batch_iterator(batch_dataset(source, 4, shuffle=False, shard_index=0, num_shards=1),
                       num_workers=-1)


# --------------------------------------------------------------------------------------
# JPEG decoding in worker processes; checkpoint and restore of the iterator
# --------------------------------------------------------------------------------------


def _jpeg_source() -> list[dict]:
    return [{"image": jpeg(48 + i % 5, 40, seed=i), "label": i} for i in range(24)]


def test_transforms_of_the_imagenet_pipeline() -> None:
    data = jpeg(48, 40, seed=3)
    rng_a, rng_b = np.random.default_rng(4), np.random.default_rng(4)
    np.testing.assert_array_equal(TrainTransform(16)(data, rng_a),
                                  train_transform(rng_b, data, size=16))
    np.testing.assert_array_equal(EvalTransform(224)(data, None), eval_transform(data))


def test_workers_resume_from_a_saved_state_with_the_same_batches() -> None:
    """JPEG bytes decoded in 2 worker processes; the iterator's state (JSON) restores a fresh
    iterator that yields exactly the batches the uninterrupted one yields; in-process
    decoding gives the same batches."""
    ds = batch_dataset(_jpeg_source(), 4, shuffle=True, seed=0, num_epochs=2,
                       transform=TrainTransform(16), shard_index=0, num_shards=1)
    reference = [ds[k] for k in range(len(ds))]  # computed here, no worker
    assert len(reference) == 12 and reference[0][0].shape == (4, 16, 16, 3)
    it = batch_iterator(ds, num_workers=2)
    head = [next(it) for _ in range(5)]
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    tail = list(it)
    it.close()
    restored = batch_iterator(ds, num_workers=2)
    restored.set_state(state)
    resumed = list(restored)
    restored.close()
    assert len(head) + len(tail) == 12 and len(resumed) == len(tail) == 7
    for got, want in zip(head + tail, reference):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    for got, want in zip(resumed, tail):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # in-process iteration restores the same way
    local = batch_iterator(ds, num_workers=0, num_threads=2)
    [next(local) for _ in range(3)]
    state = local.get_state()
    again = batch_iterator(ds, num_workers=0)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)[1], reference[3][1])


def test_a_failing_transform_raises_in_the_consumer() -> None:
    source = [{"image": b"not a jpeg", "label": 0}] * 8
    ds = batch_dataset(source, 4, shuffle=False, transform=TrainTransform(16), shard_index=0,
                       num_shards=1)
    with pytest.raises(Exception, match="cannot identify image file"):
        next(batch_iterator(ds, num_workers=0))
