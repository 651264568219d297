"""Images/s of the ImageNet train pipeline: the old thread pool against grain worker processes.

The benchmark writes ``--images`` synthetic JPEGs at ImageNet-like sizes (about 400 x 350
pixels and 110 KB: a smooth random field plus pixel noise, quality 95) into a temporary
folder, then runs the train pipeline over them, reading each file per example:

    decode (Pillow) -> random-resized-crop to 224 -> random flip -> batch of 256 -> normalize

for

* ``threads-T``: the hand-written ``ThreadPoolExecutor`` pipeline that tern_jax used before
  grain (kept here, as it was, as the baseline), with T decoding threads;
* ``grain-W``: :func:`tern_jax.data.pipeline.batch_dataset` + ``batch_iterator`` with W
  worker processes (one thread each); ``grain-0`` computes the batches in this process.

Each configuration runs pinned (``sched_setaffinity``, inherited by its threads and worker
processes) to as many CPUs as it has threads or workers (``grain-0``: one), so the thread
pool's main thread, which stacks and normalizes batches, shares those CPUs as grain's main
process does (``--no-pin`` lifts this). Each configuration first yields ``--warmup``
batches (thread / process start-up and the batches that piled up meanwhile, not timed), then
``--batches`` batches are timed. Rounds interleave the configurations so machine-load drift
hits all alike; a configuration's figure is its best round. Ratios are against the thread
pool with as many threads as grain has workers (the same CPUs), all measured in this run.
Goal: grain at least as fast per core as the thread pool, and scaling with workers.

    PYTHONPATH=. python benchmarks/input_pipeline.py [--images 512] [--batches 6]
        [--warmup 2] [--rounds 2] [--workers 1,2] [--dtype float32|uint8] [--no-pin]
        [--batch 256]

``--dtype uint8`` skips the host normalization (the trainer normalizes on the device).
``--images 4 --batch 2 --batches 1 --warmup 1 --rounds 1 --workers 1 --no-pin`` only checks
that it runs (the test suite's smoke run).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

BATCH = 256


# --------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------


def write_jpegs(folder: str, count: int, seed: int = 0) -> list[str]:
    """``count`` JPEGs of about 400 x 350 pixels and 110 KB in ``folder``; returns the paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = int(rng.integers(360, 440)), int(rng.integers(320, 380))
        coarse = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0, 22, size=smooth.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(pixels).save(path, format="JPEG", quality=95)
        paths.append(path)
    return paths


class JpegFiles:
    """Random-access source reading one JPEG file per example (as array_record reads bytes)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with open(self.paths[index], "rb") as f:
            return {"image": f.read(), "label": index % 1000}


# --------------------------------------------------------------------------------------
# Baseline: the thread-pool pipeline tern_jax used before grain (unchanged in substance)
# --------------------------------------------------------------------------------------


def _random_access_stream(source, *, seed: int) -> Iterator[tuple[tuple[int, int], Callable]]:
    """Yields ``((epoch, index), read)`` per example, endlessly, a permutation per epoch."""
    indices = np.arange(len(source))
    epoch = 0
    while True:
        for i in np.random.default_rng([seed, epoch]).permutation(indices):
            i = int(i)

            def read(i: int = i) -> tuple[Any, int]:
                ex = source[i]
                return ex["image"], int(ex["label"])

            yield (epoch, i), read
        epoch += 1


def thread_pool_batches(source, batch_size: int, *, seed: int, num_workers: int,
                        dtype: Any, prefetch_batches: int = 2
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Reads, decodes and transforms examples in a thread pool; assembles ordered batches."""
    from tern_jax.data.augment import normalize
    from tern_jax.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, train_transform

    def work(key: tuple[int, int], read: Callable) -> tuple[np.ndarray, int]:
        image, label = read()
        rng = np.random.default_rng([seed, key[0], key[1], 1])
        return train_transform(rng, image, size=224), label

    stream = _random_access_stream(source, seed=seed)
    raw = np.dtype(dtype) == np.uint8
    window = batch_size * (prefetch_batches + 1)
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="imagenet")
    pending: collections.deque[Future] = collections.deque()
    try:
        while True:
            while len(pending) < window:
                pending.append(pool.submit(work, *next(stream)))
            results = [pending.popleft().result() for _ in range(batch_size)]
            images = np.stack([r[0] for r in results])
            labels = np.asarray([r[1] for r in results], np.int32)
            yield (images if raw else normalize(images, IMAGENET_MEAN, IMAGENET_STD, dtype),
                   labels)
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------------------
# grain
# --------------------------------------------------------------------------------------


def grain_batches(source, batch_size: int, *, seed: int, num_workers: int, dtype: Any):
    from tern_jax.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, TrainTransform
    from tern_jax.data.pipeline import batch_dataset, batch_iterator

    ds = batch_dataset(source, batch_size, shuffle=True, seed=seed, num_epochs=None,
                       transform=TrainTransform(224), dtype=dtype, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, shard_index=0, num_shards=1)
    return batch_iterator(ds, num_workers=num_workers, num_threads=1, buffer_size=2)


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def images_per_second(make: Callable[[], Iterator], batches: int, warmup: int,
                      cores: int | None = None, batch: int = BATCH) -> float:
    """Images/s of the iterator ``make()`` returns, with this process (and the threads and
    worker processes it starts) pinned to the first ``cores`` CPUs (``None``: no pinning)."""
    saved = os.sched_getaffinity(0) if cores else None
    if cores:
        os.sched_setaffinity(0, set(sorted(saved)[:cores]))
    try:
        return _images_per_second(make, batches, warmup, batch)
    finally:
        if saved:
            os.sched_setaffinity(0, saved)


def _images_per_second(make: Callable[[], Iterator], batches: int, warmup: int,
                       batch: int = BATCH) -> float:
    it = make()
    try:
        images, _ = next(it)  # start-up: threads / worker processes, first batch
        assert images.shape == (batch, 224, 224, 3), images.shape
        for _ in range(warmup - 1):  # drain what piled up during the start-up
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch / (time.perf_counter() - start)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="distinct JPEG files")
    parser.add_argument("--batch", type=int, default=BATCH, help="images per batch")
    parser.add_argument("--batches", type=int, default=6, help="timed batches")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="1,2", help="thread / worker-process counts")
    parser.add_argument("--dtype", default="float32", choices=("float32", "uint8"))
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin each configuration to as many CPUs as it has threads "
                             "or workers (grain-0: 1 CPU)")
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    pin = args.pin and hasattr(os, "sched_setaffinity")
    if pin and max(counts) > len(os.sched_getaffinity(0)):
        parser.error(f"--workers {args.workers} needs more CPUs than the "
                     f"{len(os.sched_getaffinity(0))} available; pass --no-pin to time anyway")
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    if args.images < args.batch:
        parser.error(f"--images must be at least one batch ({args.batch}), got {args.images}")
    batch = args.batch
    dtype = np.dtype(args.dtype)

    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, args.images)
        sizes = [os.path.getsize(p) for p in paths]
        from PIL import Image

        dims = [Image.open(p).size for p in paths[:64]]
        print(f"{len(paths)} synthetic JPEGs: mean {statistics.mean(sizes) / 1e3:.0f} KB, "
              f"mean {statistics.mean(d[0] for d in dims):.0f} x "
              f"{statistics.mean(d[1] for d in dims):.0f} px; batch {batch}, output "
              f"{dtype.name}, {args.warmup} + {args.batches} timed batches, best of "
              f"{args.rounds} rounds, {os.cpu_count()} CPUs"
              f"{', each run pinned to as many CPUs as threads/workers' if pin else ''}, "
              f"python {sys.version.split()[0]}")
        source = JpegFiles(paths)
        configs: dict[str, Callable[[], Iterator]] = {}
        for n in counts:
            configs[f"threads-{n}"] = (
                lambda n=n: thread_pool_batches(source, batch, seed=0, num_workers=n,
                                                dtype=dtype))
        configs["grain-0"] = lambda: grain_batches(source, batch, seed=0, num_workers=0,
                                                   dtype=dtype)
        for n in counts:
            configs[f"grain-{n}"] = (
                lambda n=n: grain_batches(source, batch, seed=0, num_workers=n, dtype=dtype))
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name, make in configs.items():
                cores = max(1, int(name.split("-")[1])) if pin else None
                rate = images_per_second(make, args.batches, max(1, args.warmup), cores, batch)
                best[name] = max(best.get(name, 0.0), rate)
                print(f"  round {r + 1}  {name:<10} {rate:7.1f} images/s", flush=True)

    print(f"\n{'pipeline':<12}{'images/s':>10}{'vs threads, same cores':>25}")
    for name, rate in best.items():
        kind, n = name.split("-")
        base = best.get(f"threads-{n}") if kind == "grain" and n != "0" else None
        ratio = f"{rate / base:.2f}x" if base else ""
        print(f"{name:<12}{rate:>10.1f}{ratio:>25}")
    if len(counts) > 1 and f"grain-{counts[0]}" in best:
        lo, hi = counts[0], counts[-1]
        grain_gain = best[f"grain-{hi}"] / best[f"grain-{lo}"]
        thread_gain = best[f"threads-{hi}"] / best[f"threads-{lo}"]
        print(f"\nscaling {lo} -> {hi}: grain {grain_gain:.2f}x, threads {thread_gain:.2f}x "
              f"(ideal {hi / lo:.1f}x)")


if __name__ == "__main__":
    main()
