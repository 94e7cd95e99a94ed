"""The notebook itself: a smoke run end to end in one shared kernel, its metrics those of the exported adapter, coming
back to a run (finished, changed, stopped), runs compared by name, real pairs, and how the notebook is committed."""
import ast
import dataclasses
import importlib.metadata
import json
import random
import re
import shutil
import threading
import time
import zipfile

import pytest
import scipy.stats
import torch
from PIL import ImageFilter

from notebook_library import NOTEBOOK, cell_sources, elite, same_weights, smoke_config, smoke_environ

CODE = [source for kind, source in cell_sources() if kind == "code"]
EXPORTS = [source for source in CODE if source.startswith("#| export")]
PAIRED = {f"enhanced_vs_{side}" for side in ("degraded", "zero_shot", "vae_ceiling")}
REMEMBER_MODEL = "import weakref\n_previous = weakref.ref(reloaded)"  # the model a finished run ends with
PARAMETERS_CELL = "# @title Check the settings and open the run"

def snapshot(folder) -> dict:
    """Every path under `folder`, with its modification time and size."""
    return {str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in sorted(folder.rglob("*"))}

def copy_of(finished_run, tmp_path, name: str):
    shutil.copytree(finished_run[0], tmp_path / name)
    return tmp_path / name

def log_rows(run_dir) -> list[dict]:
    return elite.read_log(run_dir / "training_log.csv")

def test_smoke_run_writes_every_file_and_the_metrics_contract(finished_run, notebook_kernel):
    run_dir, _ = finished_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    held_out = f"test_row_{metrics['per_image'][0]['row']}"  # what section 8 enhances when nothing is set
    for name in ("run.json", "data/images.npy", "data/manifest.json", "metrics.json",
                 "comparisons/degradation_families.png", "comparisons/step_000000.png", "adapter/adapter.safetensors",
                 "adapter/adapter.json", f"{held_out}.png", f"{held_out}_enhanced.png", "results.zip"):
        assert (run_dir / name).is_file(), name
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["step_000002.pt", "step_000004.pt"]
    with open(run_dir / "training_log.csv") as handle:
        assert handle.readline().strip().split(",") == list(elite.LOG_FIELDS)
    rows = log_rows(run_dir)
    assert [int(row["step"]) for row in rows] == [0, 1, 2, 3, 4] and rows[-1]["total"] == "" != rows[-1]["val_lpips"]
    n = len(metrics["per_image"])
    assert metrics["mode"] == "smoke" and n >= 2 and (run_dir / "comparisons/examples.png").is_file()
    for metric in ("lpips_alex", "lpips_vgg", "csim", "psnr"):
        assert set(metrics[metric]) >= {"degraded", "enhanced", "zero_shot", "vae_ceiling"}
        for summary in metrics[metric].values():
            assert set(summary) >= {"mean", "std", "n", "ci95"} and summary["n"] == n
        assert set(metrics["paired"][metric]) == PAIRED
        for gain in metrics["paired"][metric].values():
            assert gain["n"] == n and 0 <= gain["better"] <= n and 0 <= gain["p_holm"] <= 1 and len(gain["ci95"]) == 2
    psnr = {side: [image[f"psnr_{side}"] for image in metrics["per_image"]] for side in ("degraded", "enhanced")}
    gains = [e - d for d, e in zip(psnr["degraded"], psnr["enhanced"])]  # an independent paired gain
    assert metrics["psnr"]["enhanced"]["mean"] == pytest.approx(sum(psnr["enhanced"]) / n, abs=1e-4)
    assert metrics["paired"]["psnr"]["enhanced_vs_degraded"]["mean"] == pytest.approx(sum(gains) / n, abs=1e-4)
    assert metrics["paired"]["psnr"]["enhanced_vs_degraded"]["better"] == sum(gain > 0 for gain in gains)
    assert metrics["per_degradation"] and set(metrics["per_degradation"]) <= set(elite.DEGRADATION_FAMILIES)
    assert metrics["single_family"] and set(metrics["single_family"]) <= set(elite.DEGRADATION_FAMILIES)
    regional = {family for family in metrics["single_family"] if elite.DEGRADATIONS[family].scope == "local"}
    assert regional and all(0 <= metrics["single_family"][family]["harm_outside"]["ci95"][1] for family in regional)
    assert {"harm_outside" in report for family, report in metrics["single_family"].items()
            if elite.DEGRADATIONS[family].scope in ("global", "scattered")} == {False}
    assert metrics["identity"]["model"].startswith("ArcFace IR-SE50") and metrics["config"]["train_seed"] == 0
    assert metrics["test_set"]["metric_networks"] == "random" and len(metrics["test_set"]["degraded_sha256"]) == 64
    assert set(metrics["inference"]) >= {"ms_per_image", "batch_size", "dtype", "device"}
    training = metrics["training"]
    assert set(training) >= {"steps", "batch_size", "seconds_per_step", "peak_vram_gib"}
    assert (training["steps"], training["batch_size"], training["peak_vram_gib"]) == (4, 2, 0.0)
    assert set(metrics["config"]) == {field.name for field in dataclasses.fields(elite.Config)}
    assert metrics["environment"]["packages"]["torch"] == importlib.metadata.version("torch") and metrics["created"]
    assert json.loads((run_dir / "run.json").read_text())["history"] == []
    assert not (notebook_kernel.workdir / "results").exists() and not list(run_dir.rglob("*.partial"))

def test_the_metrics_are_those_of_the_exported_adapter_reloaded(finished_run):
    run_dir, config, cpu = finished_run[0], smoke_config(), torch.device("cpu")
    degraded, clean, _ = elite.ImagePairs(elite.prepare_data(config, run_dir), config).held_out("test")
    reloaded = elite.load_adapter(run_dir / "adapter", cpu, torch.float32)  # what a user downloads
    networks = {"lpips_alex": elite.make_lpips("alex", pretrained=False), "csim": elite.load_identity_encoder(
        pretrained=False, device=cpu)[0], "lpips_vgg": elite.make_lpips("vgg", pretrained=False)}
    scores = elite.score({"enhanced": elite.enhance(reloaded, degraded, 8, cpu, torch.float32)}, clean, networks, cpu)
    recorded = json.loads((run_dir / "metrics.json").read_text())["per_image"]
    for metric in elite.METRICS:  # metrics.json keeps 5 decimals
        assert [row[f"{metric}_enhanced"] for row in recorded] == pytest.approx(scores[f"{metric}_enhanced"].tolist(),
                                                                                  abs=1e-5), metric

USE_IT_CELL = next(source for source in CODE if source.startswith("# @title Enhance an image"))
FAKE_COLAB = ("import sys, types\nfiles = types.SimpleNamespace(upload=lambda: {}, download=print)  # cancelled\n"
              "sys.modules['google.colab.files'] = files\nIN_COLAB = True\n")

def test_a_finished_run_visited_again_trains_and_measures_nothing_and_goes_straight_to_use_it(notebook_kernel,
                                                                                             finished_run, tmp_path):
    run_dir, render = copy_of(finished_run, tmp_path, "again"), tmp_path / "my render.png"
    elite.synthetic_face(random.Random(5), 80).save(render)
    before = snapshot(run_dir)
    notebook_kernel.evaluate(REMEMBER_MODEL)  # the finished run's model, still in the kernel
    not_called = "def {0}(*args, **kwargs):\n    raise AssertionError('{0} was called')"
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir, input_image=render), probes={
        PARAMETERS_CELL: "print('previous model alive:', _previous() is not None)",
        "#| export\ndef train(": not_called.format("train"), "#| export\ndef untrained_sides(": not_called.format(
            "evaluate")})
    assert finished and "finished and measured" in text and "previous model alive: False" in text, text[-3000:]
    after = snapshot(run_dir)
    for name in ("metrics.json", "training_log.csv", "run.json", "checkpoints/step_000002.pt",
                 "checkpoints/step_000004.pt", "data/manifest.json", "adapter/adapter.safetensors"):
        assert after[name] == before[name], name
    assert (run_dir / "my render_enhanced.png").is_file() and "my render_enhanced.png" in zipfile.ZipFile(
        run_dir / "results.zip").namelist()
    text = notebook_kernel.evaluate(FAKE_COLAB + USE_IT_CELL.replace("upload_image = False", "upload_image = True"))
    assert "No file was uploaded" in text and snapshot(run_dir) == after  # cancelled: nothing changed

@pytest.mark.parametrize("overrides, form, message", [
    ({"seed": 1}, {}, "seed: 0 -> 1"), ({}, {"train_seed": 1}, "train_seed: 0 -> 1"),
    ({"resolution": 65}, {}, "resolution=65: a multiple of 8"), ({"dataset": "/no/such/folder"}, {}, "not a folder")])
def test_a_changed_run_or_a_bad_value_is_refused_before_anything_is_written(notebook_kernel, finished_run, tmp_path,
                                                                          overrides, form, message):
    run_dir = copy_of(finished_run, tmp_path, "changed")
    before = snapshot(run_dir)
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir, **overrides), form=form)
    assert not finished and message in text and "mode=smoke | run directory" not in text, text[-2000:]
    assert snapshot(run_dir) == before

@pytest.mark.slow  # a stopped run and its resumed run
def test_stop_then_run_all_ends_with_the_weights_of_a_run_that_never_stopped(notebook_kernel, finished_run,
                                                                            tmp_path):
    run_dir, step_cell = tmp_path / "stopped", next(source for source in EXPORTS if "def train_step(" in source)
    slow_steps = {step_cell[:step_cell.index("def train_step(") + 15]: (  # a second a step: time to press Stop
        "_train_step = train_step\ndef train_step(*args, **kwargs):\n    time.sleep(1)\n"
        "    return _train_step(*args, **kwargs)")}
    result = {}
    quick = dict(single_family_probe=False)  # a free setting: the weights are what is compared
    thread = threading.Thread(target=lambda: result.update(text=notebook_kernel.run_all(
        smoke_environ(run_dir, **quick), probes=slow_steps)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "step_000002.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    notebook_kernel.interrupt()  # Colab's Stop button
    thread.join(300)
    finished, text = result["text"]
    assert not finished and "continues from step_000002.pt" in text, text[-3000:]
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir, **quick))
    assert finished and "Resuming from step 2" in text, text[-3000:]
    assert same_weights(*(run / "checkpoints" / "step_000004.pt" for run in (finished_run[0], run_dir)))
    assert [int(row["step"]) for row in log_rows(run_dir)] == [0, 1, 2, 3, 4]

def test_a_new_learning_rate_or_gpu_applies_from_the_resume_step_and_is_recorded(notebook_kernel, finished_run,
                                                                                 tmp_path):
    run_dir = copy_of(finished_run, tmp_path, "new_rate")
    rows_before, checkpoint = log_rows(run_dir), run_dir / "checkpoints" / "step_000004.pt"
    torch.save(torch.load(checkpoint, weights_only=True) | {"compute": "Tesla T4 float16"}, checkpoint)  # on a T4
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir, train_steps=6, learning_rate=5e-5,
                                                           single_family_probe=False))  # free: a quicker run
    assert finished and "From step 4 on: learning_rate 0.0001 -> 5e-05" in text, text[-3000:]
    compute = f"{elite.describe_device(torch.device('cpu'))['name']} float32"
    assert f"From step 4 on: compute 'Tesla T4 float16' -> '{compute}'" in text
    rows, changed = log_rows(run_dir), smoke_config(train_steps=6, learning_rate=5e-5)
    assert rows[:4] == rows_before[:4] and [int(row["step"]) for row in rows] == [0, 1, 2, 3, 4, 5, 6]
    for row in rows[4:6]:
        assert float(row["lr"]) == pytest.approx(5e-5 * elite.lr_factor(int(row["step"]), changed), rel=1e-12)
    history = [{"step": 4, "field": "train_steps", "old": 4, "new": 6},
               {"step": 4, "field": "learning_rate", "old": 1e-4, "new": 5e-5},
               {"step": 4, "field": "compute", "old": "Tesla T4 float16", "new": compute}]
    assert json.loads((run_dir / "run.json").read_text())["history"] == history
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 6 and metrics["config"]["learning_rate"] == 5e-5

@pytest.mark.slow
def test_runs_named_as_in_the_form_are_compared_image_by_image_another_train_seed_too_but_not_another_seed(
        notebook_kernel, finished_run):
    runs = notebook_kernel.workdir / "runs"  # where runs named in the form live
    shutil.copytree(finished_run[0], runs / "default-smoke")
    other_seed = json.loads((runs / "default-smoke" / "metrics.json").read_text())  # as seed 1 would leave it
    other_seed["test_set"] |= {"seed": 1, "rows_sha256": "another test set"}
    (runs / "seed1-smoke").mkdir()
    (runs / "seed1-smoke" / "metrics.json").write_text(json.dumps(other_seed))
    quick = dict(train_steps=1, single_family_probe=False)  # the comparison needs their test images, not quality
    named = f"default, seed1-smoke, {runs / 'default-smoke'}"  # as in the form, a folder's name, a folder
    finished, text = notebook_kernel.run_all(smoke_environ(runs, run_name="trainseed1", train_seed=1, **quick,
                                                           compare_runs=named) | {"ELITE_RUN_DIR": ""})
    assert finished and "seed1-smoke is left out: its test set differs (seed: 1 -> 0;" in text, text[-3000:]
    comparison = json.loads((runs / "trainseed1-smoke" / "comparison.json").read_text())
    assert list(comparison) == ["default-smoke"]  # named as in the form and as a path: one run, once
    mine = json.loads((runs / "trainseed1-smoke" / "metrics.json").read_text())["per_image"]
    p_values, p_holm = [], []
    for name in comparison:
        theirs = json.loads((runs / name / "metrics.json").read_text())["per_image"]
        assert [row["row"] for row in theirs] == [row["row"] for row in mine]  # the same test images
        for metric in elite.METRICS:
            sign = 1 if elite.HIGHER_IS_BETTER[metric] else -1  # positive: this run better
            gains = [sign * (a[f"{metric}_enhanced"] - b[f"{metric}_enhanced"]) for a, b in zip(mine, theirs)]
            result = comparison[name][metric]
            assert set(result) == {"mean", "ci95", "p_holm", "n", "better"} and result["n"] == len(gains)
            assert result["mean"] == pytest.approx(sum(gains) / len(gains), abs=1e-9)
            assert result["better"] == sum(gain > 0 for gain in gains)
            p_values.append(scipy.stats.ttest_1samp(gains, 0.0).pvalue)
            p_holm.append(result["p_holm"])
    order, running = sorted(range(len(p_values)), key=p_values.__getitem__), 0.0  # Holm over all, by hand
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        assert p_holm[index] == pytest.approx(running, rel=1e-9, abs=1e-12)

@pytest.mark.slow
def test_a_smoke_run_on_real_pairs_trains_and_evaluates_the_real_family(notebook_kernel, tmp_path):
    for index in range(16):
        clean = elite.synthetic_face(random.Random(index), 80)
        for side, image in (("clean", clean), ("degraded", clean.filter(ImageFilter.GaussianBlur(2)))):
            (tmp_path / "pairs" / side).mkdir(parents=True, exist_ok=True)
            image.save(tmp_path / "pairs" / side / f"face_{index:02d}.png")
    run_dir = tmp_path / "real"
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir, dataset=tmp_path / "pairs"))
    assert finished, text[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["per_degradation"]) == ["real"] and metrics["training"]["steps"] == 4
    assert (run_dir / "data" / "degraded.npy").is_file() and metrics["single_family"] == {}  # no probe: one family

def test_the_notebook_is_committed_clean():
    notebook = json.loads(NOTEBOOK.read_text())
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in notebook["cells"] if cell["cell_type"] == "code")

def test_export_cells_are_pure_definitions():
    for source in EXPORTS:
        assert not [line for line in source.splitlines() if line.lstrip().startswith(("!", "%"))]
        tree = ast.parse(source)
        for node in tree.body:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
            names = [name for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)]
            assert isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)) or (
                isinstance(node, (ast.Assign, ast.AnnAssign)) and names
                and all(re.fullmatch(r"[A-Z][A-Za-z0-9_]*", name.id) for name in names)), ast.unparse(node)[:80]
        assert not [node for node in ast.walk(tree) if isinstance(node, ast.ExceptHandler) and node.type is None]
        assert not [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute) and node.func.attr == "cuda"]
