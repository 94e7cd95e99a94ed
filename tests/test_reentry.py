"""Coming back to a run, as Colab users do: Run all again, Stop then Run all, a changed value, resume off.
Every re-entry continues exactly or refuses before writing anything. All runs share one kernel."""
import csv
import hashlib
import json
import shutil
import time

import pyarrow
import pyarrow.parquet
import torch

from notebook_library import elite, smoke_config, smoke_environ, trainable_weights

PARAMETERS_CELL = "# @title Check the settings and open the run"
PREVIOUS_MODEL_PROBE = {PARAMETERS_CELL: "print('previous model alive:', _previous() is not None)"}
REMEMBER_MODEL = "import weakref\n_previous = weakref.ref(enhancer)"


def snapshot(folder) -> dict:
    """Every file under `folder`: size, modification time and content hash."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns,
                                            hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(folder.rglob("*")) if path.is_file()}


def copy_of(finished_run, tmp_path, name: str):
    run_dir = tmp_path / name
    shutil.copytree(finished_run[0], run_dir)
    return run_dir


def log_rows(run_dir) -> list[dict]:
    with open(run_dir / "training_log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_all_again_continues_and_changes_nothing_it_measured(notebook_kernel, finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path, "again")
    before = snapshot(run_dir)
    if "True" not in notebook_kernel.evaluate("print('enhancer' in globals())"):  # this test alone, say
        assert notebook_kernel.run_all(smoke_environ(run_dir))[0]  # a model in the kernel to let go of
    notebook_kernel.evaluate(REMEMBER_MODEL)
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir), probes=PREVIOUS_MODEL_PROBE)
    assert finished, text[-3000:]
    assert "Nothing to train: this run has done 4 steps" in text
    assert "previous model alive: False" in text  # released before the new one is built
    after = snapshot(run_dir)
    for name in ("metrics.json", "training_log.csv", "run.json", "checkpoints/step_000002.pt",
                 "checkpoints/step_000004.pt", "data/images.npy", "data/manifest.json", "baselines.pt",
                 "loss_balance.json"):
        assert after[name] == before[name], name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 4 and metrics["training"]["seconds_per_step"] > 0
    assert log_rows(run_dir)[-1] == {**log_rows(run_dir)[-1], "step": "4", "total": ""}  # the final validation row


def wait_for(path, background, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and background["thread"].is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), background.get("text", "")[-3000:]


def test_stop_then_run_all_continues_to_the_weights_of_a_straight_run(notebook_kernel, finished_run, tmp_path):
    run_dir = tmp_path / "stopped"
    background = notebook_kernel.run_all_in_background(smoke_environ(run_dir))
    wait_for(run_dir / "checkpoints" / "step_000002.pt", background)
    notebook_kernel.interrupt()  # Colab's Stop button
    background["thread"].join(300)
    assert not background["finished"] and "KeyboardInterrupt" in background["text"]
    assert "Stopped. Run all continues from step_000002.pt" in background["text"]
    assert notebook_kernel.evaluate(
        "import threading\nprint([t.name for t in threading.enumerate() if t.name.startswith('prefetch')])"
    ).strip() == "[]"

    notebook_kernel.evaluate(REMEMBER_MODEL)
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir), probes=PREVIOUS_MODEL_PROBE)
    assert finished, text[-3000:]
    assert "previous model alive: False" in text and "Resuming from step 2" in text
    straight = trainable_weights(finished_run[0] / "checkpoints" / "step_000004.pt")
    resumed = trainable_weights(run_dir / "checkpoints" / "step_000004.pt")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert [int(row["step"]) for row in log_rows(run_dir)] == [0, 1, 2, 3, 4]


def test_a_changed_defining_setting_is_refused_before_anything_is_written(notebook_kernel, finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path, "changed")
    before = snapshot(run_dir)
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir, test_fraction=0.25), form={"seed": 1})
    assert not finished
    assert "seed: 0 -> 1" in text and "test_fraction: 0.5 -> 0.25" in text and "start a new run" in text
    assert snapshot(run_dir) == before


def test_resume_off_on_an_existing_run_is_refused_before_anything_is_written(notebook_kernel, finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path, "resume_off")
    before = snapshot(run_dir)
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir), form={"resume": False})
    assert not finished and "resume is off" in text and "Nothing was written" in text
    assert snapshot(run_dir) == before  # data/, the smoke stand-ins and the checkpoints alike


def test_a_new_learning_rate_applies_from_the_resume_step_and_is_recorded(notebook_kernel, finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path, "new_rate")
    rows_before = log_rows(run_dir)
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir, train_steps=6), form={"learning_rate": 5e-5})
    assert finished, text[-3000:]
    assert "From step 4 on: learning_rate 0.0001 -> 5e-05" in text
    changed = smoke_config(train_steps=6, learning_rate=5e-5)
    rows = [row for row in log_rows(run_dir) if row["total"]]
    assert rows[:4] == [row for row in rows_before if row["total"]]  # what ran before is kept as it ran
    for row in rows[4:]:
        assert float(row["lr"]) == changed.learning_rate * elite.lr_factor(int(row["step"]), changed)
    history = [{"step": 4, "field": "train_steps", "old": 4, "new": 6},
               {"step": 4, "field": "learning_rate", "old": 1e-4, "new": 5e-5}]
    assert json.loads((run_dir / "run.json").read_text())["history"] == history
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["learning_rate"] == 5e-5 and metrics["training"]["history"] == history
    assert metrics["training"]["steps"] == 6 and metrics["training"]["trained_this_session"] == 2


def test_train_steps_at_or_below_the_steps_done_trains_nothing_and_reports_the_true_run(notebook_kernel,
                                                                                      finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path, "fewer_steps")
    (run_dir / "metrics.json").unlink()  # so that this evaluation has to describe the run itself
    before = snapshot(run_dir)
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir, train_steps=2))
    assert finished, text[-3000:]
    assert "Nothing to train: this run has done 4 steps and train_steps=2" in text
    after = snapshot(run_dir)
    moved = {"adapter/adapter.json", "results.zip"}  # names the smoke model's folder, which moved with the copy
    assert {name: after[name][2] for name in before if name not in moved} == {
        name: entry[2] for name, entry in before.items() if name not in moved}
    for name in ("training_log.csv", "run.json", "checkpoints/step_000002.pt", "checkpoints/step_000004.pt"):
        assert after[name] == before[name], name  # not even rewritten
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = sorted(float(row["seconds_per_step"]) for row in log_rows(run_dir) if row["total"])
    assert metrics["training"]["steps"] == 4 and metrics["config"]["train_steps"] == 4
    assert metrics["training"]["seconds_per_step"] == (seconds[1] + seconds[2]) / 2  # median of the 4 steps


def test_bad_values_and_missing_inputs_are_refused_before_anything_is_written(notebook_kernel, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "wrong_schema").mkdir()
    pyarrow.parquet.write_table(pyarrow.table({"img": [b"..."], "label": [0]}), tmp_path / "wrong_schema" / "a.parquet")
    cases = [({"learning_rate": "inf"}, "learning_rate=inf: must be finite"),
             ({"learning_rate": "1e6"}, "learning_rate=1000000.0: use a value in (0, 0.01]"),
             ({"seed": "-1"}, "seed=-1: use a non-negative integer"),
             ({"num_examples": "0"}, "num_examples=0: must be at least 1"),
             ({"dataset": str(tmp_path / "no_such_folder")}, "is not a folder"),
             ({"dataset": str(tmp_path / "empty")}, "holds no parquet files and no images"),
             ({"dataset": str(tmp_path / "wrong_schema")}, "it needs an 'image' column"),
             ({"input_image": str(tmp_path / "missing.png")}, "input_image=")]
    for index, (overrides, message) in enumerate(cases):
        run_dir = tmp_path / f"bad_{index}"
        finished, text = notebook_kernel.run_all(smoke_environ(run_dir, **overrides))
        assert not finished and message in text, text[-2000:]
        assert not run_dir.exists()


def test_a_read_only_finished_run_is_evaluated_without_writing_into_it(notebook_kernel, finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path, "view_only")
    before = snapshot(run_dir)
    make_read_only = (f"import os as _os\n_access = _os.access\n_os.access = lambda path, mode, *args, **kwargs: "
                      f"str(path) != {str(run_dir)!r} and _access(path, mode, *args, **kwargs)")
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir), probes={
        "#| export\nimport collections": make_read_only,  # as a view-only shared Drive folder answers
        "# @title Enhance an image": "_os.access = _access"})
    assert finished, text[-3000:]
    assert "is read-only: evaluating its finished run" in text
    assert snapshot(run_dir) == before
    outputs = notebook_kernel.workdir / "runs" / "view_only-outputs"
    assert (outputs / "metrics.json").exists() and (outputs / "example_enhanced.png").exists()
