"""tern_jax.report reads run folders (one- and two-stage) into curves and the paper's table."""

import json

import matplotlib
import pytest

from tern_jax import report

matplotlib.use("Agg")


def _model(name, variant, loss, acc):
    return {"name": name, "variant": variant, "seed": 0, "train_loss": loss, "train_acc": 0.5,
            "test_loss": None if acc is None else 1.0, "test_acc": acc, "zero_fraction": None}


def _write_run(path, model, variants_acc, epochs, *, results=True, dataset="cifar10",
               loss_name="loss"):
    """A run folder like tern-jax train writes: variants_acc maps variant -> per-epoch acc."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(
        {"name": path.name, "model": {"name": model, "kwargs": {}},
         "data": {"dataset": dataset}}))
    with open(path / "metrics.jsonl", "w") as f:
        for e in range(epochs):
            models = [_model(f"{v}/seed0", v, 2.0 - e * 0.1, accs[e])
                      for v, accs in variants_acc.items()]
            f.write(json.dumps({"epoch": e + 1, "lr": 0.1, "seconds": 1.0,
                                "loss_name": loss_name, "models": models}) + "\n")
    if results:
        final = {v: {"mean": accs[-1], "test_acc": [accs[-1]]} for v, accs in variants_acc.items()}
        (path / "results.json").write_text(json.dumps(
            {"name": path.name, "model": model, "dataset": dataset, "loss_name": loss_name,
             "epochs": epochs, "variants": final}))


def _write_two_stage(path):
    _write_run(path / "pretrain", "resnet20", {"fp": [0.5, 0.9]}, 2, results=True)
    _write_run(path / "finetune", "resnet20", {"tern": [0.8, 0.85, 0.91]}, 3, results=True)
    (path / "results.json").write_text(json.dumps(
        {"name": path.name, "model": "resnet20", "dataset": "cifar10", "epochs": 5,
         "stages": {"pretrain": 2, "finetune": 3},
         "variants": {"fp": {"mean": 0.9}, "tern": {"mean": 0.91}}}))


def test_load_runs_finds_one_and_two_stage_runs_and_skips_other_files(tmp_path):
    _write_run(tmp_path / "set_a" / "scratch", "resnet8", {"fp": [0.3, 0.5], "tern": [0.2, 0.4]},
               2)
    _write_two_stage(tmp_path / "set_b" / "r20")
    (tmp_path / "set_a" / "table.md").write_text("| run |")
    (tmp_path / "empty").mkdir()
    runs = report.load_runs(tmp_path)
    assert [r.name for r in runs] == ["set_a/scratch", "set_b/r20"]
    assert [s.name for s in runs[0].stages] == [""]
    assert [s.name for s in runs[1].stages] == ["pretrain", "finetune"]
    assert runs[1].model == "resnet20" and runs[1].dataset == "cifar10"
    assert len(runs[1].stages[1].records) == 3


def test_load_runs_of_a_run_folder_itself_and_of_an_empty_folder(tmp_path):
    _write_run(tmp_path / "one", "resnet8", {"fp": [0.3]}, 1)
    assert [r.name for r in report.load_runs(tmp_path / "one")] == ["one"]
    (tmp_path / "nothing").mkdir()
    assert report.load_runs(tmp_path / "nothing") == []


def test_load_runs_rejects_a_missing_folder_and_a_non_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="root .*missing.*not an existing folder"):
        report.load_runs(tmp_path / "missing")
    with pytest.raises(TypeError, match="root must be a folder path.*got int"):
        report.load_runs(3)


def test_curves_continue_a_two_stage_run_after_its_pretraining(tmp_path):
    _write_two_stage(tmp_path / "r20")
    curves = {c.model: c for c in report.curves(report.load_runs(tmp_path))}
    assert curves["fp/seed0"].epochs == [1, 2]
    assert curves["fp/seed0"].test_acc == pytest.approx([50.0, 90.0])
    assert curves["tern/seed0"].epochs == [3, 4, 5]
    assert curves["tern/seed0"].test_acc == pytest.approx([80.0, 85.0, 91.0])
    assert curves["tern/seed0"].train_loss == pytest.approx([2.0, 1.9, 1.8])


def test_final_accuracy_uses_results_and_falls_back_to_the_last_evaluated_epoch(tmp_path):
    _write_run(tmp_path / "done", "resnet8", {"fp": [0.3, 0.5]}, 2)
    _write_run(tmp_path / "running", "resnet8", {"tern": [0.2, 0.4, None]}, 3, results=False)
    done, running = report.load_runs(tmp_path)
    assert report.final_accuracy(done) == pytest.approx({"fp": 50.0})
    assert report.final_accuracy(running) == pytest.approx({"tern": 40.0})


def test_compare_table_puts_paper_figures_beside_cifar10_runs_and_lists_unrun_models(tmp_path):
    _write_two_stage(tmp_path / "r20")
    _write_run(tmp_path / "small", "resnet8", {"tern": [0.55]}, 1)
    table = report.compare_table(report.load_runs(tmp_path)).splitlines()
    assert table[0].startswith("| run | model | variant | epochs | test acc %")
    assert "| r20 | resnet20 | fp | 2+3 | 90.00 | 91.70 | 91.65 |" in table
    assert "| r20 | resnet20 | tern | 2+3 | 91.00 | 91.70 | 91.65 |" in table
    assert "| small | resnet8 | tern | 1 | 55.00 | - | - |" in table
    assert "| not run | resnet32 | - | - | - | 92.36 | 92.48 |" in table
    assert not any(row.startswith("| not run | resnet20") for row in table)


def test_compare_table_leaves_paper_columns_empty_for_another_dataset(tmp_path):
    _write_run(tmp_path / "digits", "resnet20", {"fp": [0.9]}, 1, dataset="digits")
    table = report.compare_table(report.load_runs(tmp_path), paper={"resnet20": {
        "fp": 1.0, "tern": 2.0}})
    assert "| digits | resnet20 | fp | 1 | 90.00 | - | - |" in table
    assert "| not run | resnet20 | - | - | - | 1.00 | 2.00 |" in table


def test_compare_table_rejects_a_bad_paper_and_bad_runs(tmp_path):
    with pytest.raises(TypeError, match="paper must be a dict.*got list"):
        report.compare_table([], paper=[1])
    with pytest.raises(TypeError, match="runs must be a Run or a list of Run.*got str"):
        report.compare_table("experiments/results")


def test_the_default_table_sets_a_cifar_run_beside_the_paper_and_lists_the_rest(tmp_path):
    _write_run(tmp_path / "r20", "resnet20", {"fp": [0.9], "tern": [0.89]}, 1)
    rows = report.compare_table(report.load_runs(tmp_path)).splitlines()[2:]
    paper = report.PAPER_CIFAR10
    fp, tern = paper["resnet20"]["fp"], paper["resnet20"]["tern"]
    assert rows[:2] == [f"| r20 | resnet20 | fp | 1 | 90.00 | {fp:.2f} | {tern:.2f} |",
                        f"| r20 | resnet20 | tern | 1 | 89.00 | {fp:.2f} | {tern:.2f} |"]
    assert rows[2:] == [f"| not run | {m} | - | - | - | {paper[m]['fp']:.2f} | "
                        f"{paper[m]['tern']:.2f} |" for m in paper if m != "resnet20"]


def test_plot_curves_draws_fp_solid_and_ternary_dashed_skipping_unevaluated_epochs(tmp_path):
    _write_run(tmp_path / "run", "resnet8", {"fp": [0.3, None, 0.5], "tern": [0.2, None, 0.4]},
               3)
    ax = report.plot_curves(report.load_runs(tmp_path))
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"fp/seed0", "tern/seed0"}
    assert lines["fp/seed0"].get_linestyle() == "-"
    assert lines["tern/seed0"].get_linestyle() == "--"
    assert lines["fp/seed0"].get_color() != lines["tern/seed0"].get_color()
    assert list(lines["tern/seed0"].get_xdata()) == [1, 3]
    assert list(lines["tern/seed0"].get_ydata()) == pytest.approx([20.0, 40.0])
    loss_ax = report.plot_curves(report.load_runs(tmp_path), metric="train_loss")
    assert list(loss_ax.get_lines()[0].get_ydata()) == pytest.approx([2.0, 1.9, 1.8])


def test_plot_curves_rejects_an_unknown_metric():
    with pytest.raises(ValueError, match="metric must be one of 'test_acc', 'test_loss', "
                                         "'train_loss', got 'acc'"):
        report.plot_curves([], metric="acc")


def test_plot_curves_names_the_run_in_labels_when_several_are_drawn(tmp_path):
    _write_run(tmp_path / "a", "resnet8", {"fp": [0.3]}, 1)
    _write_run(tmp_path / "b", "resnet8", {"fp": [0.4]}, 1)
    ax = report.plot_curves(report.load_runs(tmp_path))
    assert sorted(line.get_label() for line in ax.get_lines()) == ["a: fp/seed0", "b: fp/seed0"]
    assert len({line.get_color() for line in ax.get_lines()}) == 1  # same variant, same colour


def test_load_runs_names_a_damaged_json_file(tmp_path):
    _write_run(tmp_path / "bad", "resnet8", {"fp": [0.3]}, 1)
    (tmp_path / "bad" / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="results.json is not valid JSON"):
        report.load_runs(tmp_path)


def test_plot_grid_draws_a_panel_for_every_run(tmp_path):
    """Notebook 4's figure: 14 runs, 14 panels with curves (not the first 12)."""
    for i in range(14):
        _write_run(tmp_path / f"run{i:02d}", "resnet8", {"fp": [0.3, 0.4 + i / 100]}, 2)
    runs = report.load_runs(tmp_path)
    fig = report.plot_grid(runs)
    drawn = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title().split(" ")[0] for ax in drawn] == [r.name for r in runs]
    assert [ax.get_lines()[0].get_ydata()[-1] for ax in drawn] == pytest.approx(
        [40.0 + i for i in range(14)])


def _write_language_model_run(path, *, results=True):
    _write_run(path, "transformer_tiny", {"fp": [0.4, 0.5], "tern": [0.3, 0.45]}, 2,
               dataset="text", loss_name="bits/byte", results=results)
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # bits per byte falling with the epochs
        for m in r["models"]:
            m["test_loss"] = 3.0 - r["epoch"] + (m["variant"] == "tern")
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_runs_loss_is_named_by_its_folder_results_first_then_its_records(tmp_path):
    _write_language_model_run(tmp_path / "lm", results=False)  # still running: no results
    running = report.load_run(tmp_path / "lm")
    assert running.loss_name == "bits/byte" and running.losses_in_bits
    assert (running.model, running.dataset) == ("transformer_tiny", "text")  # config.json's
    _write_run(tmp_path / "image", "resnet8", {"fp": [0.3]}, 1)
    image = report.load_run(tmp_path / "image")
    assert image.loss_name == "loss" and not image.losses_in_bits
    results = json.loads((tmp_path / "image" / "results.json").read_text())
    (tmp_path / "image" / "results.json").write_text(json.dumps(
        {**results, "loss_name": "nats"}))
    assert report.load_run(tmp_path / "image").loss_name == "nats"  # results.json first
    (tmp_path / "bare").mkdir()  # records of no loss_name, and no results: a loss
    (tmp_path / "bare" / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "lr": 0.1, "seconds": 1.0, "models": []}) + "\n")
    assert report.load_run(tmp_path / "bare").loss_name == "loss"


def test_a_language_model_is_drawn_in_bits_per_byte(tmp_path):
    _write_language_model_run(tmp_path / "lm")
    run = report.load_run(tmp_path / "lm")
    assert run.losses_in_bits and run.loss_name == "bits/byte"
    fig = report.runs_figure([run])
    test_ax = fig.axes[0]
    assert test_ax.get_ylabel() == "test bits per byte"
    lines = {line.get_label(): list(line.get_ydata()) for line in test_ax.get_lines()}
    assert lines == {"fp/seed0": [2.0, 1.0], "tern/seed0": [3.0, 2.0]}
    grid = report.plot_grid([run])
    assert "bits per byte" in grid.axes[0].get_title()
    assert list(grid.axes[0].get_lines()[0].get_ydata()) == [2.0, 1.0]


def test_load_run_names_a_folder_that_is_no_run(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match="notes is not a run folder: it has no "
                                                "metrics.jsonl"):
        report.load_run(tmp_path / "notes")



def test_compare_table_gives_a_language_model_its_bits_per_byte(tmp_path):
    _write_language_model_run(tmp_path / "lm")
    _write_run(tmp_path / "r20", "resnet20", {"fp": [0.9]}, 1)
    runs = report.load_runs(tmp_path)
    table = report.compare_table(runs).splitlines()
    assert table[:2] == ["| run | model | variant | epochs | test acc % | bits/byte | paper fp % "
                         "| paper ternary % |", "| --- " * 8 + "|"]
    assert "| lm | transformer_tiny | fp | 2 | - | 1.0000 | - | - |" in table  # last epoch
    assert "| lm | transformer_tiny | tern | 2 | - | 2.0000 | - | - |" in table
    assert "| r20 | resnet20 | fp | 1 | 90.00 | - | 91.70 | 91.65 |" in table
    assert "| not run | resnet32 | - | - | - | - | 92.36 | 92.48 |" in table
    assert report.final_bits_per_byte(runs[0]) == {"fp": 1.0, "tern": 2.0}
    results = json.loads((tmp_path / "lm" / "results.json").read_text())
    for variant, bits in (("fp", 0.5), ("tern", 0.75)):  # results.json's, when it has them
        results["variants"][variant]["bits_per_byte"] = {"mean": bits}
    (tmp_path / "lm" / "results.json").write_text(json.dumps(results))
    assert report.final_bits_per_byte(report.load_run(tmp_path / "lm")) == {"fp": 0.5,
                                                                             "tern": 0.75}


def test_a_plot_is_written_in_the_format_its_suffix_names(tmp_path):
    assert report.plot_format("a/curves.png") == "png" and report.plot_format("c.PDF") == "pdf"
    with pytest.raises(ValueError, match=r"names no image format matplotlib writes \(no suffix\)"):
        report.plot_format(tmp_path / "curves")
    with pytest.raises(ValueError, match=r"\(\.txt\); end it in one of .*\.png"):
        report.plot_format("curves.txt")
    _write_run(tmp_path / "run", "resnet8", {"fp": [0.3, 0.5]}, 2)
    svg = report.plot_runs([tmp_path / "run"], tmp_path / "out" / "curves.svg")
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
