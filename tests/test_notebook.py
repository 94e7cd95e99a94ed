"""The whole notebook, executed headless: smoke mode end to end, a killed-and-resumed run, footprint mode, no GPU."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from notebook_library import NOTEBOOK, cell_sources, elite, smoke_environ, trainable_weights

METRIC_KEYS = {"mode", "lpips_alex", "lpips_vgg", "psnr", "ssim", "paired", "per_degradation", "single_family",
               "inference", "evaluation", "training", "config", "environment", "created", "model", "test_set",
               "per_image"}


def start_smoke_run(run_dir: Path, workdir: Path) -> subprocess.Popen:
    """The smoke notebook in a process (and kernel) of its own, as a Colab session is."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **smoke_environ(run_dir)}
    command = [sys.executable, str(Path(__file__).with_name("notebook_runner.py")), str(NOTEBOOK), "600"]
    with open(workdir / f"{run_dir.name}.log", "a") as log:  # a file, not a pipe: an unread pipe would block
        return subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_smoke_run_writes_every_file(finished_run, notebook_kernel):
    run_dir, _ = finished_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["mode"] == "smoke" and METRIC_KEYS <= set(metrics)
    for metric in elite.METRICS:
        assert list(metrics[metric]) == list(elite.SIDES)  # degraded ... zero_shot, vae_ceiling, no_skips, enhanced
        for summary in metrics[metric].values():
            assert {"mean", "std", "n", "ci95"} <= set(summary) and summary["n"] == 8
        assert set(metrics["paired"][metric]) == {f"enhanced_vs_{side}" for side in elite.PAIRED_BASELINES}
        assert all(gain["n"] == 8 and 0 <= gain["better"] <= 8 for gain in metrics["paired"][metric].values())
    assert list(metrics["single_family"]) == list(elite.DEGRADATION_FAMILIES)  # every family is on in smoke
    for family in metrics["single_family"].values():
        assert list(family) == list(elite.PROBE_METRICS)
        for summaries in family.values():
            assert set(summaries) == {"degraded", "zero_shot", "enhanced", "enhanced_vs_degraded"}
            assert all(summary["n"] == 8 for summary in summaries.values())
    assert metrics["evaluation"]["probe_images_enhanced"] == 8 * len(elite.DEGRADATION_FAMILIES)
    assert set(metrics["training"]["loss_balance"]) == {"0", "1"}  # step 0 and the smoke preset's gram_start_step
    assert set(metrics["inference"]) >= {"ms_per_image", "batch_size", "dtype", "device"}
    assert set(metrics["training"]) >= {"steps", "batch_size", "seconds_per_step", "peak_vram_gib", "history"}
    assert metrics["per_degradation"] and "say nothing about quality" in metrics["note"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002.pt", "step_000004.pt"]
    assert len(list((run_dir / "comparisons").glob("example_*.png"))) == 8  # all 8 test images
    for name in ("run.json", "training_log.csv", "data/manifest.json", "data/images.npy", "example_enhanced.png",
                 "comparisons/zoom_best.png", "comparisons/per_family_lpips_alex.png", "adapter/adapter.safetensors",
                 "adapter/adapter.json", "baselines.pt", "loss_balance.json", "comparisons/step_000000.png"):
        assert (run_dir / name).is_file(), name
    assert metrics["data"]["requested"] == metrics["data"]["used"] == 16
    assert metrics["runtime"] == {"dtype": "float32", "memory_cap_gib": None, "attention": "cpu"}
    record = json.loads((run_dir / "run.json").read_text())
    assert record["identity"]["seed"] == 0 and record["history"] == []
    assert not (notebook_kernel.workdir / "results").exists()
    assert not list(run_dir.rglob("*.partial"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(finished_run, notebook_kernel, tmp_path):
    straight_dir, _ = finished_run
    run_dir = tmp_path / "killed_run"
    process = start_smoke_run(run_dir, tmp_path)
    first_checkpoint = run_dir / "checkpoints" / "step_000002.pt"
    deadline = time.monotonic() + 600
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the notebook process and its kernel, as a disconnect would
    process.wait()
    assert first_checkpoint.exists()
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir))  # another process: the new Colab session
    assert finished and "Resuming from step 2" in text, text[-3000:]
    straight = trainable_weights(straight_dir / "checkpoints" / "step_000004.pt")
    resumed = trainable_weights(run_dir / "checkpoints" / "step_000004.pt")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_footprint_mode_builds_the_real_architecture(notebook_kernel, tmp_path):
    run_dir = tmp_path / "footprint"
    finished, text = notebook_kernel.run_all({"ELITE_RUN_MODE": "footprint", "ELITE_RUN_DIR": str(run_dir),
                                              "ELITE_RESOLUTION": "64", "ELITE_TRAIN_STEPS": "1",
                                              "ELITE_BATCH_SIZE": "1"})
    assert finished, text[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    groups = metrics["model"]["groups"]
    assert groups["unet_conv_in"] == 4 * 320 * 3 * 3 + 320 and groups["skip_convs"] == 491_520
    assert abs(groups["unet_lora"] - 8.11e6) < 0.01e6 and abs(groups["vae_decoder_lora"] - 0.52e6) < 0.01e6
    assert abs(metrics["model"]["frozen_params"] - (865.9e6 + 83.65e6)) < 0.1e6
    training = metrics["training"]
    assert training["seconds_per_step"] > 0 and metrics["inference"]["ms_per_image"] > 0
    assert training["achieved_tflops"] == pytest.approx(training["tflop_per_step"] / training["seconds_per_step"], abs=0.02)
    assert training["tflop_per_step"] > 0 and metrics["inference"]["lora"] == "merged"


def test_full_run_without_gpu_stops_before_any_download(notebook_kernel, tmp_path):
    finished, text = notebook_kernel.run_all({"ELITE_RUN_MODE": "full", "ELITE_RUN_DIR": str(tmp_path / "full")})
    assert not finished and "run_mode='full' needs a GPU" in text and "T4 GPU" in text
    assert not (tmp_path / "full").exists()


def test_notebook_is_committed_clean():
    notebook = json.loads(NOTEBOOK.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)


def test_export_cells_are_pure():
    for kind, source in cell_sources():
        if kind == "code" and source.startswith("#| export"):
            for line in source.splitlines():
                stripped = line.strip()
                assert not stripped.startswith(("!", "%")) and ".cuda()" not in stripped, line
                assert not stripped.startswith("except:"), line
