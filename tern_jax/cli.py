"""Command line: ``tern-jax`` (or ``python -m tern_jax``).

Subcommands::

    tern-jax quickstart [--workdir DIR]              offline digits demo, full precision vs ternary
    tern-jax train --config PATH|quickstart --workdir DIR [--set field=value ...] [--resume]
                   [--coordinator HOST:PORT --num_processes N --process_id I | --distributed]
    tern-jax eval --workdir DIR [--model tern/seed0 --packed PATH]   test accuracy (bits/byte)
    tern-jax export --workdir DIR --model tern/seed0 --out PATH   packed ternary checkpoint
                    [--format gguf --type tq2_0|tq1_0|f16]        or a GGUF file for llama.cpp
    tern-jax sample --workdir DIR --model tern/seed0 --prompt "def "  text from a language model
    tern-jax summary --model resnet20|transformer_small [--variant tern_t2]  size/sparsity table
    tern-jax plot RUN_DIR [RUN_DIR ...] --out curves.png          training curves

Every subcommand takes ``--debug``. A wrong flag, ``--set`` field or path ends with exit status
2 and one line on stderr (``tern-jax: error: ...``); ``--debug`` shows the traceback instead.
``train`` stopped by SIGTERM saves the epoch in progress and exits with status 143;
``--resume`` continues it. A checkpoint is restored only once its ``integrity.json`` vouches
for it; ``--unverified`` (``train --resume``, ``eval``, ``export``, ``sample``) restores one
whose ``integrity.json`` was lost, unchecked.
Nothing the command line did not write is replaced: a new run's ``--workdir`` must be new,
empty or an earlier run's folder, and plots and exports never overwrite a user's file.

This file is longer than the project's ~350-line guide: it is the one place that turns
flags into calls and every error into one line; each subcommand is a few lines and splitting
them would spread the argument checks over several files.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

# JAX, Flax and the package's training code are imported inside the commands that use them,
# so ``tern-jax --help`` and a usage error answer at once.


class UsageError(ValueError):
    """A wrong flag or path on the command line (exit status 2)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nucleus_mass(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 1:  # nan fails too
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _check_training_workdir(workdir: str) -> None:
    """A new run goes into a new or empty folder, or into an earlier run's folder."""
    from tern_jax.train.run_folder import RunFolder

    try:
        RunFolder(Path(workdir).expanduser()).check_trainable()
    except FileExistsError as e:
        raise UsageError(f"--{e}") from None


def _check_run_workdir(workdir: str) -> None:
    """An existing run's folder (eval, export)."""
    path = Path(workdir).expanduser()
    if not path.exists():
        raise UsageError(f"--workdir {path} does not exist; give the folder of a training run")
    if not path.is_dir():
        raise UsageError(f"--workdir {path} is a file; give the folder of a training run")


def _check_data_dir(config) -> None:
    """The data folder the config names exists and is a folder (its content: the loader)."""
    data_dir = config.data.data_dir
    if data_dir is None:  # a dataset that reads no data_dir refuses one (Config)
        return
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise UsageError(f"data.data_dir {path} does not exist; pass --set "
                         f"data.data_dir=FOLDER holding the {config.data.dataset} data")
    if not path.is_dir():
        raise UsageError(f"data.data_dir {path} is a file; pass --set data.data_dir=FOLDER "
                         f"holding the {config.data.dataset} data")


def _check_plot_out(out) -> None:
    from tern_jax import fs
    from tern_jax.report import PLOT_WHAT, plot_format

    plot_format(out)  # a suffix matplotlib writes, before anything runs

    fs.check_replaceable(Path(out).expanduser(), fs.owned_file, PLOT_WHAT)


def _needs_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("plotting needs matplotlib, which is not installed: pip install "
                         "matplotlib (in the checkout: pip install '.[plot]')") from None


def _train_config(args):
    """The config to train: ``--config`` (default: the quickstart's), or with ``--resume`` and
    no ``--config`` the run's own ``config.json``; then the ``--set`` values. A run of the
    quickstart config on another model or dataset is named after them."""
    from tern_jax.train import load_config, override, quickstart_config
    from tern_jax.train.run_folder import RunFolder

    if args.config is None and args.resume:
        saved = RunFolder(Path(args.workdir).expanduser()).read_config()
        if saved is None:
            raise UsageError(f"--resume: {args.workdir} holds no run to resume (no "
                             "config.json); drop --resume to start a new run there")
        return override(saved, args.set or [])
    base = load_config(args.config) if args.config is not None else quickstart_config()
    config = override(base, args.set or [])
    if args.config is None:
        paths = {item.split("=", 1)[0].strip() for item in args.set or []}
        if "name" not in paths and {"model.name", "data.dataset"} & paths:
            names = [part.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
                     for part in (config.data.dataset, config.model.name)]
            config = override(config, {"name": "_".join(names)})
    return config


def _train(args) -> int:
    from tern_jax.train import distributed, run

    config = _train_config(args)
    joined = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed or any(a is not None for a in joined):
        distributed.initialize(*joined, timeout=args.init_timeout)
        with distributed.failures_end_the_job():
            return _train_checked(args, config, run, main=distributed.is_main())
    return _train_checked(args, config, run)


def _train_checked(args, config, run, main: bool = True) -> int:
    _check_training_workdir(args.workdir)
    _check_data_dir(config)
    if args.plot:
        _needs_matplotlib()
        _check_plot_out(Path(args.workdir) / "curves.png")
    run(config, args.workdir, resume=args.resume, verify=not args.unverified)
    if args.plot and main:
        from tern_jax.report import plot_runs

        out = plot_runs([args.workdir], Path(args.workdir) / "curves.png", title=config.name)
        print(f"curves written to {out}")
    return 0


def _quickstart(args) -> int:
    from tern_jax.train import latest_checkpoint, quickstart_config, train_and_evaluate
    from tern_jax.train.config import differences
    from tern_jax.train.loop import SAFE_TO_CHANGE
    from tern_jax.train.run_folder import RunFolder

    workdir = Path(args.workdir)
    _check_training_workdir(args.workdir)
    config = quickstart_config()
    saved = RunFolder(workdir).read_config()
    if saved is not None and set(differences(saved, config)) - SAFE_TO_CHANGE:
        raise UsageError(f"--workdir {workdir} holds a different run ({saved.name!r}, not the "
                         "quickstart's); give the quickstart a new --workdir")
    resume = latest_checkpoint(workdir) is not None
    if resume:
        print(f"{workdir} holds an earlier quickstart run; continuing it (to train it again, "
              "delete that folder or give another --workdir)")
    train_and_evaluate(config, workdir, resume=resume)
    print(f"\nrun files in {workdir}/: config.json, metrics.jsonl, results.json, checkpoints/")
    packed = workdir / "tern_packed"  # an earlier run's export is replaced only when asked
    overwrite = " --overwrite" if packed.exists() else ""
    print(f"next: tern-jax export --workdir {workdir} --model tern/seed0 --out "
          f"{packed}{overwrite} && tern-jax plot {workdir} --out {workdir}/curves.png")
    return 0


def _eval(args) -> int:
    _check_run_workdir(args.workdir)
    if (args.packed is None) != (args.model is None):
        raise UsageError("--packed and --model go together: --model names the run's model "
                         "whose export --packed holds, e.g. --model tern/seed0")
    from tern_jax.train import Trainer, restore_run

    restored = restore_run(args.workdir, args.epoch, verify=not args.unverified)
    trainer = Trainer(_on_these_devices(restored.config), resolved=restored.resolved)
    state, shown = restored.state, range(len(trainer.names))
    if args.packed is not None:  # that model's weights replaced by its export's
        slot, i = _pick_model(restored, args.model, args.workdir)
        state, shown = _with_packed(state, i, _load_packed(args.packed, restored, slot)), [i]
    result = trainer.evaluate(trainer.place(state))
    print(f"{restored.config.name}: epoch {restored.epoch}, {trainer.inputs.num_test} test "
          "examples" + (f", {args.model} from {args.packed}" if args.packed else ""))
    loss = restored.resolved.family.loss_name
    for i in shown:
        print(f"  {trainer.names[i]:20s} test acc {100 * result['test_acc'][i]:6.2f}%  "
              f"{loss} {result['test_loss'][i]:.4f}  zeros "
              f"{100 * result['zero_fraction'][i]:.1f}%")
    return 0


def _on_these_devices(config):
    """``config``, or with its default sharding (data parallel) where its mesh needs
    another number of devices than this machine has (a run trained on more devices)."""
    import dataclasses

    import jax

    from tern_jax.sharding import mesh_shape
    from tern_jax.train import ShardingConfig

    try:
        mesh_shape(config.sharding, jax.device_count())
    except ValueError:
        return dataclasses.replace(config, sharding=ShardingConfig())
    return config


def _load_packed(path, restored, slot) -> dict:
    """A packed export (tern-jax export) of ``slot`` of the run; another model's, or one that
    does not record which model it holds, is refused."""
    import tern_jax
    from tern_jax.checkpoint import read_origin

    origin = read_origin(path)
    held = (origin.get("model"), origin.get("variant"), origin.get("seed"))
    wanted = (restored.config.model.name, slot.variant, slot.seed)
    if None in held:
        raise UsageError(
            f"--packed {path} does not record its model, variant and seed (it was not written "
            f"by tern-jax export); pass the export of {slot} (tern-jax export --model {slot})")
    if held != wanted:
        raise UsageError(
            f"--packed {path} holds {held[1]}/seed{held[2]} of {held[0]}, not {slot} of "
            f"{wanted[0]}; pass the export of {slot} (tern-jax export --model {slot})")
    if origin.get("run") not in (None, restored.config.name):
        raise UsageError(
            f"--packed {path} is an export of run {origin['run']!r} (epoch "
            f"{origin.get('epoch')}), not of {restored.config.name!r}; pass an export of this "
            "run's model")
    return tern_jax.load_ternary(path)


def _with_packed(state, i: int, packed: dict):
    """``state`` with model ``i``'s weights (and statistics) replaced by a loaded export."""
    import jax
    import jax.numpy as jnp

    from tern_jax.integrity import check_shapes, tree_shapes

    def put(stacked, loaded, what):
        check_shapes(tree_shapes(jax.tree.map(lambda a: a[i], stacked)), tree_shapes(loaded),
                     what)
        return jax.tree.map(lambda a, b: a.at[i].set(jnp.asarray(b, a.dtype)), stacked, loaded)

    params = put(state.params, packed.get("params", {}), "the packed checkpoint")
    stats = put(state.model_state, packed.get("batch_stats", {}), "the packed checkpoint")
    return state.replace(params=params, model_state=stats)


def _export(args) -> int:
    from tern_jax.export import GGUF_TYPES

    if args.type is not None and args.type not in GGUF_TYPES:  # the one table of types
        raise UsageError(f"--type {args.type!r} is no GGUF type; choose one of "
                         f"{', '.join(GGUF_TYPES)}")
    if args.format is None:  # a GGUF type names the format
        args.format = "gguf" if args.type is not None else "packed"
    if args.format == "packed" and args.type is not None:
        raise UsageError(f"--type {args.type} is a GGUF type, but --format packed writes a "
                         "packed checkpoint; drop --type, or pass --format gguf")
    args.type = args.type or "tq2_0"
    _check_run_workdir(args.workdir)
    if not args.out.strip():
        raise UsageError("--out is empty; give the path to write the export to")
    out = Path(args.out).expanduser()
    if args.format == "gguf" and (args.out.endswith(("/", os.sep)) or out.is_dir()):
        raise UsageError(f"--out {args.out} is a folder, but a GGUF export is one file; give "
                         f"a file path such as {out / 'model.gguf'}")
    if out.parent.exists() and not out.parent.is_dir():
        raise UsageError(f"--out {out}: {out.parent} is a file, not a folder; give a path in "
                         "a folder")
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {out} already exists; pass --overwrite to replace an earlier "
                         "export, or choose a new path")
    import dataclasses

    import jax

    import tern_jax
    from tern_jax.presets import is_full_precision_rules
    from tern_jax.train import restore_run

    restored = restore_run(args.workdir, args.epoch, verify=not args.unverified)
    family, model = restored.resolved.family, restored.config.model.name
    if args.format not in family.exports:
        raise UsageError(f"{args.workdir} trained {model!r}, a model of {family.task_name}, "
                         f"which exports as {', '.join(family.exports)}; --format "
                         f"{args.format} is not among them")
    slot, i = _pick_model(restored, args.model, args.workdir)
    rules = family.rules(slot.variant)
    rules = () if is_full_precision_rules(rules) else rules
    params = jax.tree.map(lambda a: a[i], restored.state.params)
    if args.format == "gguf":  # for llama.cpp (tern_jax/export.py)
        from tern_jax.export import to_gguf

        path = to_gguf(out, params, restored.stack.task.config, rules, type=args.type,
                       overwrite=args.overwrite, name=f"{restored.config.name}-{slot}")
        print(f"exported {slot} ({model}) as GGUF {args.type.upper()} to "
              f"{path}: {path.stat().st_size:,} bytes")
        return 0
    stats = jax.tree.map(lambda a: a[i], restored.state.model_state)
    tree = {"params": params, "batch_stats": stats}
    scoped = [dataclasses.replace(r, pattern="params/" + r.pattern) for r in rules]
    origin = {"model": model, "variant": slot.variant, "seed": slot.seed,
              "run": restored.config.name, "epoch": restored.epoch}
    path = tern_jax.save_ternary(args.out, tree, scoped, overwrite=args.overwrite,
                                 unused="ignore", origin=origin)
    summary = tern_jax.summary(tree, scoped, print_fn=None, unused="ignore")
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    print(summary)
    print(f"exported {slot} ({model}) to {path}: {size:,} bytes on disk")
    return 0


def _pick_model(restored, name: str, workdir):
    """The :class:`Slot` named ``name`` (``tern/seed0``) in a restored run, and its index."""
    from tern_jax.train import Slot

    slots = restored.config.slots
    names = [s.name for s in slots]
    try:
        slot = Slot.parse(name)
    except ValueError as e:
        raise ValueError(f"{e}; choose one of {names}") from None
    if slot not in slots:
        raise ValueError(f"no model {name!r} in {workdir}; choose one of {names}")
    return slot, slots.index(slot)


def _sample(args) -> int:
    import jax
    from flax import nnx

    import tern_jax
    from tern_jax.activations import quantize_inputs
    from tern_jax.models.transformer import Transformer, generate
    from tern_jax.nnx_utils import with_params
    from tern_jax.presets import is_full_precision_rules
    from tern_jax.train import restore_run
    from tern_jax.train.families import resolve
    from tern_jax.train.run_folder import RunFolder, final_stage

    _check_run_workdir(args.workdir)
    saved = final_stage(RunFolder(args.workdir)).read_config()
    if saved is not None and not (family := resolve(saved).family).samples:
        raise UsageError(f"{args.workdir} trained {saved.model.name!r}, a model of "
                         f"{family.task_name}, which does not sample text; sample needs the "
                         "run of a language model (model.name='transformer_*')")
    restored = restore_run(args.workdir, args.epoch, verify=not args.unverified)
    slot, i = _pick_model(restored, args.model, args.workdir)
    rules = restored.resolved.family.rules(slot.variant)
    if args.packed is not None:  # the weights of `tern-jax export`, dequantized
        params = _load_packed(args.packed, restored, slot)["params"]
    else:  # the run's latent weights, ternarized by the variant's rules
        params = jax.tree.map(lambda a: a[i], restored.state.params)
        if not is_full_precision_rules(rules):
            params = tern_jax.quantize_params(params, rules, unused="ignore")
    task = restored.stack.task  # a sampling family's task holds its TransformerConfig
    model = nnx.eval_shape(lambda: Transformer(task.config, rngs=nnx.Rngs(0)))
    if args.prompt_file is not None:  # any bytes, as a byte model reads them
        prompt = Path(args.prompt_file).expanduser().read_bytes()
    else:  # the command line's bytes as given, UTF-8 or not (os.fsencode undoes the decoding)
        prompt = os.fsencode(args.prompt)
    model = quantize_inputs(with_params(model, params), rules)  # 8-bit activations, if any
    text = generate(model, prompt, steps=args.steps,
                    key=jax.random.key(args.seed), temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p)
    print((prompt + text).decode("utf-8", errors="replace"))
    return 0


def _summary(args) -> int:
    import dataclasses

    import jax

    import tern_jax
    from tern_jax.data.specs import DATASETS
    from tern_jax.train import Config
    from tern_jax.train.families import family_of

    family = family_of(args.model)
    rules = family.rules(args.variant)  # an unknown variant fails before any model is built
    dataset = next(d for d in DATASETS.values() if d.kind == family.reads)  # its input's specs
    image_flags = {"--num_classes": args.num_classes, "--image_size": args.image_size,
                   "--channels": args.channels}
    if dataset.input_shape:  # an image model, sized by the flags
        size, channels = args.image_size or 32, args.channels or 3
        dataset = dataclasses.replace(dataset, num_classes=args.num_classes or 10,
                                      input_shape=(size, size, channels),
                                      mean=(0.5,) * channels, std=(0.25,) * channels)
    elif given := [flag for flag, value in image_flags.items() if value is not None]:
        raise UsageError(f"{' '.join(given)} size image models; {args.model!r} is a "
                         f"{family.task_name} (reads {family.reads}): leave them out")
    config = Config(model={"name": args.model, "variants": (args.variant,)},
                    data={"dataset": dataset.name})
    task = family.task(config, dataset)
    variables = jax.eval_shape(task.init, jax.random.key(0))
    params = jax.tree.map(lambda s: jax.random.normal(jax.random.key(1), s.shape, s.dtype) * 0.05,
                          variables["params"])
    tern_jax.summary(params, rules, unused="ignore")
    return 0


def _plot(args) -> int:
    _needs_matplotlib()
    for folder in args.runs:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UsageError(f"run folder {path} does not exist; give the --workdir of a "
                             "training run" if not path.exists() else
                             f"run folder {path} is a file; give the --workdir of a training run")
    _check_plot_out(args.out)
    from tern_jax.report import plot_runs

    out = plot_runs(args.runs, args.out, title=args.title)
    print(f"wrote {out}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``tern-jax train: error: ...``), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # the module docstring is RST; the terminal shows it without the ``literal`` markup
    parser = _Parser(prog="tern-jax", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    unverified = {"action": "store_true", "help": "restore a checkpoint whose integrity.json "
                  "is missing, without checking its files and arrays"}

    p = add("quickstart", help="offline demo on scikit-learn's digits")
    p.add_argument("--workdir", default="runs/quickstart")
    p.set_defaults(fn=_quickstart)

    p = add("train", help="train the models of a config")
    p.add_argument("--config", default=None,
                   help="path to a Python file with get_config(), or 'quickstart' (the "
                        "default; with --resume: the run's own config.json)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a config field by its dotted path, e.g. --set "
                        "schedule.epochs=10 --set seeds=0,1 --set model.kwargs.d_model=128")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--unverified", **unverified)
    p.add_argument("--distributed", action="store_true",
                   help="join a multi-host job detected by JAX (TPU pod slice, Slurm)")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-host: address of process 0, which serves the coordinator")
    p.add_argument("--num_processes", type=_positive_int, default=None,
                   help="multi-host: processes in the job (one per host)")
    p.add_argument("--process_id", type=int, default=None,
                   help="multi-host: this process, 0 .. num_processes-1")
    p.add_argument("--init_timeout", type=float, default=120.0, metavar="SECONDS",
                   help="multi-host: time for every process to reach the coordinator")
    p.add_argument("--plot", action="store_true", help="write curves.png into the workdir")
    p.set_defaults(fn=_train)

    p = add("eval", help="evaluate a run's checkpoint on the test set")
    p.add_argument("--workdir", required=True)
    p.add_argument("--epoch", type=_positive_int, default=None)
    p.add_argument("--model", default=None, help="with --packed: the model it replaces")
    p.add_argument("--packed", default=None,
                   help="evaluate this packed checkpoint (tern-jax export) of --model")
    p.add_argument("--unverified", **unverified)
    p.set_defaults(fn=_eval)

    p = add("export", help="write one model as a packed ternary checkpoint")
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", required=True, help="e.g. tern/seed0")
    p.add_argument("--out", required=True)
    p.add_argument("--epoch", type=_positive_int, default=None)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export (never anything else)")
    p.add_argument("--format", choices=("packed", "gguf"), default=None,
                   help="packed ternary checkpoint (the default), or a GGUF file for "
                        "llama.cpp (the default when --type is given)")
    p.add_argument("--type", default=None,
                   help="GGUF type of the ternary kernels: a name of "
                        "tern_jax.export.GGUF_TYPES, default tq2_0; implies --format gguf")
    p.add_argument("--unverified", **unverified)
    p.set_defaults(fn=_export)

    p = add("sample", help="generate text with a trained language model")
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", required=True, help="e.g. tern/seed0")
    p.add_argument("--prompt", default="def ",
                   help="the text to continue (its bytes as given, UTF-8 or not)")
    p.add_argument("--prompt-file", dest="prompt_file", default=None, metavar="PATH",
                   help="read the prompt's bytes from a file instead (any bytes)")
    p.add_argument("--steps", type=_positive_int, default=200, help="bytes to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="0: the most likely byte")
    p.add_argument("--top_k", type=_positive_int, default=None,
                   help="sample among the k most likely bytes only (1: the most likely byte)")
    p.add_argument("--top_p", type=_nucleus_mass, default=None,
                   help="sample from the nucleus: the fewest most likely bytes whose probability "
                        "reaches p, 0 < p <= 1")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same text)")
    p.add_argument("--epoch", type=_positive_int, default=None)
    p.add_argument("--packed", default=None,
                   help="sample from this packed checkpoint (tern-jax export) of the model")
    p.add_argument("--unverified", **unverified)
    p.set_defaults(fn=_sample)

    p = add("summary", help="size/sparsity table of a model under a variant")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--variant", default="tern")
    p.add_argument("--num_classes", type=_positive_int, default=None,
                   help="image models: classes (default 10)")
    p.add_argument("--image_size", type=_positive_int, default=None,
                   help="image models: height and width (default 32)")
    p.add_argument("--channels", type=_positive_int, default=None,
                   help="image models: channels (default 3)")
    p.set_defaults(fn=_summary)

    p = add("plot", help="plot the curves of one or more runs to PNG")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default=None)
    p.set_defaults(fn=_plot)
    return parser


def _one_line(error: BaseException) -> str:
    """The error as one line (:func:`tern_jax.fs.one_line`), with the flag that fixes missing
    data."""
    from tern_jax.data import DataNotFoundError
    from tern_jax.fs import one_line

    text = one_line(error)
    if isinstance(error, DataNotFoundError):
        text += " Pass --set data.data_dir=FOLDER (see help(tern_jax.data.load_dataset))"
    return text


def main(argv=None) -> int:
    """Runs the command line; returns the exit status (2: a wrong flag, path or field)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else 2
    debug = getattr(args, "debug", False)
    with warnings.catch_warnings():
        if not debug:  # a warning is one line too (the damaged-checkpoint fallback, ...)
            warnings.showwarning = _one_line_warning
        return _run(args, debug)


def _run(args, debug: bool) -> int:
    """Runs the subcommand; every error ends as one line (exit 2, 3 or 1) unless ``debug``."""
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        if debug:
            raise
        where = _process_prefix()
        print(f"tern-jax: {where}interrupted", file=sys.stderr)
        if where:  # the other processes stopped too (failures_end_the_job)
            from tern_jax.train import distributed

            distributed.exit_after_failure(130)
        return 130
    except Exception as e:  # noqa: BLE001 - every error ends as one line unless --debug
        if debug:
            raise
        from tern_jax._imports import UserCodeError
        from tern_jax.train import CheckpointDamaged, TrainingDiverged
        from tern_jax.train.lock import RunLocked
        from tern_jax.train.loop import Preempted

        where = _process_prefix()
        if isinstance(e, TrainingDiverged):
            status = 3
        elif isinstance(e, Preempted):  # 128 + SIGTERM, as a shell reports it
            status = 143
        elif isinstance(e, (ValueError, TypeError, OSError, ImportError, CheckpointDamaged,
                            RunLocked, UserCodeError)):
            status = 2
        else:
            status = 1
            print(f"tern-jax: internal error: {where}{type(e).__name__}: {_one_line(e)} (rerun "
                  "with --debug for the traceback and report it)", file=sys.stderr)
        if status != 1:
            print(f"tern-jax: error: {where}{_one_line(e)}", file=sys.stderr)
        if where:  # a multi-process job: the others stopped; skip JAX's shutdown barrier
            from tern_jax.train import distributed

            distributed.exit_after_failure(status)
        return status


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"tern-jax: warning: {_one_line(message)}", file=sys.stderr)


def _process_prefix() -> str:
    """``"process N: "`` in a job of several processes, else ``""``."""
    if "jax" not in sys.modules:  # nothing of JAX ran: no job either
        return ""
    import jax

    from tern_jax.train import distributed

    if not distributed.in_job():
        return ""
    return f"process {jax.process_index()}: "


if __name__ == "__main__":
    sys.exit(main())
