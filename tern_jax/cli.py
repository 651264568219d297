"""Command line: ``tern-jax`` (or ``python -m tern_jax``).

Subcommands::

    tern-jax quickstart [--workdir DIR]              offline digits demo, full precision vs ternary
    tern-jax train --config PATH|quickstart --workdir DIR [--set field=value ...] [--resume]
    tern-jax eval --workdir DIR                      test accuracy of a run's last checkpoint
    tern-jax export --workdir DIR --model tern/seed0 --out PATH   packed ternary checkpoint
    tern-jax summary --model resnet20 [--variant tern_t2]         size/sparsity table
    tern-jax plot RUN_DIR [RUN_DIR ...] --out curves.png          training curves
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path


def _train(args) -> int:
    from tern_jax.train import load_config, override, run

    config = override(load_config(args.config), args.set or [])
    if args.distributed:
        import jax

        jax.distributed.initialize()
    run(config, args.workdir, resume=args.resume)
    if args.plot:
        from tern_jax.train.metrics import plot_runs

        out = plot_runs([args.workdir], Path(args.workdir) / "curves.png", title=config.name)
        print(f"curves written to {out}")
    return 0


def _quickstart(args) -> int:
    from tern_jax.train import latest_checkpoint, quickstart_config, train_and_evaluate

    workdir = Path(args.workdir)
    resume = latest_checkpoint(workdir) is not None
    if resume:
        print(f"{workdir} holds an earlier quickstart run; continuing it (delete it to start over)")
    train_and_evaluate(quickstart_config(), workdir, resume=resume)
    print(f"\nrun files in {workdir}/: config.json, metrics.jsonl, results.json, checkpoints/")
    print(f"next: tern-jax export --workdir {workdir} --model tern/seed0 --out "
          f"{workdir}/tern_packed && tern-jax plot {workdir} --out {workdir}/curves.png")
    return 0


def _eval(args) -> int:
    from tern_jax.train import Trainer, restore_run

    restored = restore_run(args.workdir, args.epoch)
    trainer = Trainer(restored.config)
    result = trainer.evaluate(trainer.place(restored.state))
    print(f"{restored.config.name}: epoch {restored.epoch}, {trainer.inputs.num_test} test images")
    for i, name in enumerate(trainer.names):
        print(f"  {name:20s} test acc {100 * result['test_acc'][i]:6.2f}%  "
              f"loss {result['test_loss'][i]:.4f}  zeros {100 * result['zero_fraction'][i]:.1f}%")
    return 0


def _export(args) -> int:
    import jax

    import tern_jax
    from tern_jax.train import Slot, restore_run
    from tern_jax.train.config import variant_rules

    restored = restore_run(args.workdir, args.epoch)
    slots = restored.config.slots
    names = [s.name for s in slots]
    try:
        slot = Slot.parse(args.model)
    except ValueError as e:
        raise ValueError(f"{e}; choose one of {names}") from None
    if slot not in slots:
        raise ValueError(f"no model {args.model!r} in {args.workdir}; choose one of {names}")
    i = slots.index(slot)
    rules = variant_rules(slot.variant) or ()
    params = jax.tree.map(lambda a: a[i], restored.state.params)
    stats = jax.tree.map(lambda a: a[i], restored.state.batch_stats)
    tree = {"params": params, "batch_stats": stats}
    scoped = [dataclasses.replace(r, pattern="params/" + r.pattern) for r in rules]
    path = tern_jax.save_ternary(args.out, tree, scoped, overwrite=args.overwrite,
                                 unused="ignore")
    summary = tern_jax.summary(tree, scoped, print_fn=None, unused="ignore")
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    print(summary)
    print(f"exported {slot} ({restored.config.model}) to {path}: {size:,} bytes on disk")
    return 0


def _summary(args) -> int:
    import jax
    import jax.numpy as jnp

    import tern_jax
    from tern_jax.models import get_model
    from tern_jax.train.config import variant_rules

    model = get_model(args.model, args.num_classes)
    size = args.image_size
    shape = (1, size, size, args.channels)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    params = jax.tree.map(lambda s: jax.random.normal(jax.random.key(1), s.shape, s.dtype) * 0.05,
                          variables["params"])
    rules = variant_rules(args.variant)
    if rules is None:
        rules = [tern_jax.Rule(".*", None)]
    tern_jax.summary(params, rules, unused="ignore")
    return 0


def _plot(args) -> int:
    from tern_jax.train.metrics import plot_runs

    out = plot_runs(args.runs, args.out, title=args.title)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tern-jax", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="offline demo on scikit-learn's digits")
    p.add_argument("--workdir", default="runs/quickstart")
    p.set_defaults(fn=_quickstart)

    p = sub.add_parser("train", help="train the models of a config")
    p.add_argument("--config", default="quickstart",
                   help="path to a Python file with get_config(), or 'quickstart'")
    p.add_argument("--workdir", required=True)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set epochs=10 --set seeds=0,1")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host TPU/GPU)")
    p.add_argument("--plot", action="store_true", help="write curves.png into the workdir")
    p.set_defaults(fn=_train)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on the test set")
    p.add_argument("--workdir", required=True)
    p.add_argument("--epoch", type=int, default=None)
    p.set_defaults(fn=_eval)

    p = sub.add_parser("export", help="write one model as a packed ternary checkpoint")
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", required=True, help="e.g. tern/seed0")
    p.add_argument("--out", required=True)
    p.add_argument("--epoch", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=_export)

    p = sub.add_parser("summary", help="size/sparsity table of a model under a variant")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--variant", default="tern")
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.set_defaults(fn=_summary)

    p = sub.add_parser("plot", help="plot the curves of one or more runs to PNG")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default=None)
    p.set_defaults(fn=_plot)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    from tern_jax.train import CheckpointDamaged, TrainingDiverged

    try:
        return args.fn(args)
    except (FileNotFoundError, FileExistsError, ValueError, TrainingDiverged,
            CheckpointDamaged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3 if isinstance(e, TrainingDiverged) else 2


if __name__ == "__main__":
    sys.exit(main())
