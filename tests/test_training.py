"""Training steps, rates, the loss-scale path a T4 takes, checkpoints (atomic, pruned) and an exact resume, in one
process and across two."""
import copy
import math
import random
import shutil
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from notebook_library import HalfActivations, checkpoint_weights, elite, same_weights, smoke_config

CPU, FP32 = torch.device("cpu"), torch.float32
EVERY_STEP = dict(checkpoint_every=100, checkpoint_minutes=1e-9, keep_checkpoints=10)  # saved by the clock alone
FAST = dict(gradient_checkpointing=False)  # the same numbers, without recomputing activations
NO_SCALER = torch.amp.GradScaler("cpu", enabled=False)  # fp32 (or bf16): no loss scale
COMPUTE = f"{elite.describe_device(CPU)['name']} float32"  # what a checkpoint records it was trained with

class Stop(Exception):
    """Stands in for a disconnect at a chosen moment."""

def stop(*args):
    raise Stop

@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """run(config, run_dir, wrap, validate): a fresh enhancer trained by train(); run.loss, run.pairs(config)."""
    source = elite.write_synthetic_celeba(tmp_path_factory.mktemp("faces"), 16, 64, seed=0)
    subset = elite.build_subset(smoke_config(), str(source), tmp_path_factory.mktemp("data"))
    loss = elite.EnhancerLoss(smoke_config(gram_start_step=0), pretrained_backbone=False)  # every term from step 0

    def train(config, run_dir, wrap=lambda loss_fn: loss_fn, validate=lambda step, rows: 0.0):
        enhancer = elite.build_enhancer(config, CPU, FP32, str(tiny_model_dir))
        return elite.train(enhancer, wrap(loss), elite.ImagePairs(subset, config), config, run_dir,
                           elite.start_record(run_dir, config), CPU, FP32, validate)
    train.loss, train.pairs, train.source = loss, lambda config: elite.ImagePairs(subset, config), source
    return train

@pytest.fixture(scope="module")
def straight(run, tmp_path_factory):
    """Four steps that never stop, a checkpoint after each from checkpoint_minutes alone."""
    run(smoke_config(**FAST, **EVERY_STEP), run_dir := tmp_path_factory.mktemp("straight"))
    return run_dir

def names(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())

def log_steps(run_dir) -> list[int]:
    return [int(row["step"]) for row in elite.read_log(run_dir / "training_log.csv")]

def copy_run(source, target, drop_steps):
    shutil.copytree(source, target, dirs_exist_ok=True)
    for step in drop_steps:
        (target / "checkpoints" / f"step_{step:06d}.pt").unlink()

def save(folder, step, enhancer, config):
    return elite.save_checkpoint(folder, step, enhancer, elite.make_optimizer(enhancer, config, CPU), NO_SCALER,
                                 config, COMPUTE)

def restore(folder, enhancer, scaler=NO_SCALER) -> int:
    return elite.restore_checkpoint(folder, enhancer, elite.make_optimizer(enhancer, smoke_config(), CPU), scaler)[0]

def test_training_learns_a_fixed_batch_with_every_term_on_and_moves_every_group(tiny_model_dir, run):
    config = smoke_config(**FAST, batch_size=1, learning_rate=3e-3, conv_in_learning_rate=3e-3, lr_schedule="constant")
    enhancer = elite.build_enhancer(config, CPU, FP32, str(tiny_model_dir))
    optimizer, batch = elite.make_optimizer(enhancer, config, CPU), run.pairs(config).train_batch(0)[:2]
    before = elite.trainable_tensors(enhancer)
    losses = [elite.train_step(enhancer, run.loss, optimizer, NO_SCALER, *batch, step, config, FP32)
              for step in range(12)]
    assert all(losses[0][name] > 0 for name in elite.LOSS_TERMS) and not any(loss["skipped"] for loss in losses)
    assert losses[-1]["total"] <= 0.5 * losses[0]["total"], [round(loss["total"], 3) for loss in losses]
    after = elite.trainable_tensors(enhancer)
    moved = {elite.parameter_group(name) for name in before if not torch.equal(before[name], after[name])}
    assert moved == set(elite.PARAMETER_GROUPS)

def test_conv_in_has_its_own_learning_rate(tiny_enhancer):
    config = smoke_config(learning_rate=1e-3, conv_in_learning_rate=1e-5)  # warmup 1, 4 steps: step 3 at 0.25
    optimizer, image = elite.make_optimizer(tiny_enhancer, config, CPU), torch.zeros(1, 3, 64, 64)
    with pytest.raises(Stop):  # the loss stops the step once the rates are set
        elite.train_step(tiny_enhancer, stop, optimizer, NO_SCALER, image, image, 3, config, FP32)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert {name: group["lr"] for name, group in groups.items()} == pytest.approx(
        {"unet_lora": 2.5e-4, "unet_conv_in": 2.5e-6, "vae_decoder_lora": 2.5e-4, "skip_convs": 2.5e-4})
    conv_in = {id(param) for name, param in tiny_enhancer.named_parameters() if name.startswith("unet.conv_in.")}
    assert {id(param) for param in groups["unet_conv_in"]["params"]} == conv_in and len(conv_in) == 2

@pytest.mark.parametrize("schedule, step, expected", [
    ("cosine", 0, 0.5), ("cosine", 1, 1.0), ("cosine", 2, 1.0), ("cosine", 4, 0.5 * (1 + math.cos(math.pi / 4))),
    ("cosine", 6, 0.5), ("cosine", 10, 0.0), ("cosine", 12, 0.0), ("constant", 0, 0.5), ("constant", 9, 1.0)])
def test_learning_rate_warms_up_then_follows_a_cosine_to_zero(schedule, step, expected):
    config = smoke_config(lr_warmup_steps=2, train_steps=10, lr_schedule=schedule)
    assert elite.lr_factor(step, config) == pytest.approx(expected, abs=1e-12)

def test_checkpoint_minutes_saves_every_step_and_a_resume_from_step_1_ends_the_same(run, straight, tmp_path):
    assert names(straight / "checkpoints") == [f"step_{step:06d}.pt" for step in (1, 2, 3, 4)]
    copy_run(straight, tmp_path, drop_steps=(2, 3, 4))
    run(smoke_config(**FAST, **EVERY_STEP), tmp_path)
    assert same_weights(*(run / "checkpoints" / "step_000004.pt" for run in (straight, tmp_path)))
    assert log_steps(tmp_path) == [0, 1, 2, 3, 4]  # the rows from step 1 on rewritten, none twice

def test_save_and_restore_round_trip_every_piece_and_a_run_without_a_loss_scale(tiny_enhancer, tmp_path):
    optimizer = elite.make_optimizer(tiny_enhancer, smoke_config(), CPU)
    params = [param for param in tiny_enhancer.parameters() if param.requires_grad]
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()  # moments to store
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    elite.save_checkpoint(tmp_path, 2, tiny_enhancer, optimizer, scaler, smoke_config(), "Tesla T4 float16")
    following = (random.random(), np.random.rand(), torch.rand(3))  # what the saved states draw next
    weights, moments = elite.trainable_tensors(tiny_enhancer), copy.deepcopy(optimizer.state_dict()["state"])
    for param in params:
        param.data.add_(1.0)
    fresh_optimizer, fresh_scaler = elite.make_optimizer(tiny_enhancer, smoke_config(), CPU), torch.amp.GradScaler(
        "cpu")
    assert elite.restore_checkpoint(tmp_path, tiny_enhancer, fresh_optimizer, fresh_scaler) == (2, "Tesla T4 float16")
    assert (random.random(), np.random.rand()) == following[:2] and torch.equal(torch.rand(3), following[2])
    assert all(torch.equal(weights[name], value) for name, value in elite.trainable_tensors(tiny_enhancer).items())
    restored = fresh_optimizer.state_dict()["state"]
    assert restored.keys() == moments.keys() and len(moments) == len(params)
    assert all(torch.equal(restored[k][slot], moments[k][slot]) for k in moments for slot in moments[k])
    assert fresh_scaler.state_dict() == scaler.state_dict() and fresh_scaler.get_scale() == 1024.0
    state = elite.read_checkpoint(save(tmp_path, 4, tiny_enhancer, smoke_config()))  # a run without a loss scale
    torch.save(state | {"scaler": None}, tmp_path / "step_000004.pt")
    fp16 = torch.amp.GradScaler("cpu", init_scale=2.0**16)  # then fp16 on a T4: a fresh scale
    assert not NO_SCALER.state_dict() and restore(tmp_path, tiny_enhancer, fp16) == 4 and fp16.get_scale() == 2.0**16

def test_pruning_keeps_the_newest_readable_checkpoints_and_skips_a_truncated_one(tiny_enhancer, tmp_path):
    config = smoke_config(keep_checkpoints=2)
    for step in (1, 2, 3, 4):
        save(tmp_path, step, tiny_enhancer, config)
    assert names(tmp_path) == ["step_000003.pt", "step_000004.pt"]
    (newest := tmp_path / "step_000004.pt").write_bytes(newest.read_bytes()[:5000])  # cut short by a disconnect
    with pytest.warns(UserWarning, match="step_000004.pt"):
        assert restore(tmp_path, tiny_enhancer) == 3
    (tmp_path / ".step_000009.pt.partial").write_bytes(b"a write cut short")
    save(tmp_path, 5, tiny_enhancer, config)
    assert names(tmp_path) == ["step_000003.pt", "step_000005.pt"]  # the readable 3 kept, the cut 4 gone

def scaled_gradient_loss(factor: float):
    """A finite loss whose gradient at the fp16 activations is `factor` x the loss scale."""
    return lambda enhanced, clean, step: dict.fromkeys(elite.LOSS_TERMS, factor * enhanced.float().sum())

@pytest.mark.filterwarnings("ignore:In CPU autocast")
def test_an_overflowing_step_is_skipped_the_loss_scale_lowered_and_without_a_scale_left_it_is_nonfinite():
    x, config = torch.ones(1, 3, 1, 1), smoke_config()  # one pixel: each weight's gradient is the activation's
    for init_scale, factor, applied, nonfinite in ((2.0**16, 1e3, False, False), (32.0, 1e3, True, False),
                                                   (1.0, 1e5, False, True), (None, 1e5, False, True)):
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale) if init_scale else NO_SCALER  # None: fp32
        model = HalfActivations()  # 1e3 x 2^16 and 1e5 > fp16's 65,504: infinite; 1e3 x 32 is not
        before, optimizer = model.skip_convs.weight.detach().clone(), elite.make_optimizer(model, config, CPU)
        result = elite.train_step(model, scaled_gradient_loss(factor), optimizer, scaler, x, x, 1, config,
                                  torch.float16 if init_scale else FP32)
        assert (result["skipped"], result["nonfinite"]) == (not applied, nonfinite) and math.isfinite(result["total"])
        assert scaler.get_scale() == (init_scale if applied else init_scale / 2) if init_scale else True
        assert torch.equal(model.skip_convs.weight, before) != applied and bool(optimizer.state) == applied

@pytest.mark.filterwarnings("ignore:In CPU autocast")
def test_with_a_loss_scale_a_streak_of_nonfinite_losses_stops_training_naming_the_checkpoint(run, tmp_path,
                                                                                             monkeypatch):
    monkeypatch.setattr(elite, "MAX_NONFINITE_STEPS", 2)
    config = smoke_config(train_steps=6, checkpoint_every=2)
    nan_from_step_2 = lambda enhanced, clean, step: scaled_gradient_loss(math.nan if step >= 2 else 1e-9)(  # noqa
        enhanced, clean, step)  # small enough for its scaled gradients to stay finite
    with pytest.raises(FloatingPointError, match=r"2 steps in a row were non-finite \(the last: step 3\)\. Lower "
                                                 r"learning_rate.*continues from step_000002\.pt"):
        elite.train(HalfActivations(), nan_from_step_2, run.pairs(config), config, tmp_path,
                    elite.start_record(tmp_path, config), CPU, torch.float16, lambda step, rows: 0.0)
    assert [(row["step"], row["skipped"]) for row in elite.read_log(tmp_path / "training_log.csv")] == [
        ("0", "False"), ("1", "False"), ("2", "True"), ("3", "True")]
    assert names(tmp_path / "checkpoints") == ["step_000002.pt"]  # none after the streak began

def test_the_evaluation_estimate_counts_every_image_it_will_enhance_at_an_eighth_of_a_batch_2_step():
    pairs = elite.ImagePairs.__new__(elite.ImagePairs)  # only what the estimate reads
    pairs.test_rows, pairs.probe_families = [{}] * 30, list(elite.DEGRADATION_FAMILIES)
    for probe, images in ((True, 30 * (3 + 10)), (False, 30 * 3)):  # zero-shot, VAE ceiling, enhanced, each family
        text = elite.evaluation_estimate(6.0, pairs, smoke_config(batch_size=2, single_family_probe=probe))
        minutes = round(images * 6.0 / (4 * 2) / 60)  # a forward pass: a quarter of a step's work per image
        assert f"about {minutes} min of evaluation ({images} images)" in text, text

def test_out_of_memory_and_the_stop_button_say_what_to_do_and_where_run_all_continues(tiny_enhancer, tmp_path):
    save(tmp_path, 2, tiny_enhancer, smoke_config())
    with pytest.raises(RuntimeError, match=r"out of memory at 64² with batch_size=3.*Lower batch_size.*resolution.*"
                                           r"continues from step_000002\.pt"), \
            elite.explained_stops(smoke_config(batch_size=3), CPU, tmp_path):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(KeyboardInterrupt, match=r"Stopped; Run all continues from step_000002\.pt"), \
            elite.explained_stops(smoke_config(), CPU, tmp_path):
        raise KeyboardInterrupt
    with pytest.raises(ValueError, match="other"), elite.explained_stops(smoke_config(), CPU, tmp_path):
        raise ValueError("other errors pass through")

def test_a_failed_save_raises_naming_the_fix_and_keeps_the_previous_checkpoint(tiny_enhancer, tmp_path,
                                                                                monkeypatch):
    config = smoke_config(keep_checkpoints=1)
    save(tmp_path, 2, tiny_enhancer, config)
    with monkeypatch.context() as patch:  # the write seems to work, the file does not read back
        patch.setattr(elite, "read_checkpoint", lambda path: None)
        with pytest.raises(OSError, match=r"step_000004.pt did not read back.*disk full or Drive disconnected.*"
                                          "older checkpoints are kept"):
            save(tmp_path, 4, tiny_enhancer, config)
    assert elite.read_checkpoint(tmp_path / "step_000002.pt")["step"] == 2
    (tmp_path / "step_000004.pt").unlink()

    def killed(state, handle):  # the process dies halfway through writing
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(torch, "save", killed)
        save(tmp_path, 4, tiny_enhancer, config)
    assert names(tmp_path) == [".step_000004.pt.partial", "step_000002.pt"] and restore(tmp_path, tiny_enhancer) == 2

CROSS_PROCESS = """import sys
sys.path.insert(0, sys.argv[1])
from notebook_library import elite, smoke_config
import torch
source, models, data, run_dir = sys.argv[2:]
config, cpu = smoke_config(gradient_checkpointing=False, train_steps=2, checkpoint_every=2), torch.device("cpu")
pairs = elite.ImagePairs(elite.build_subset(smoke_config(), source, elite.Path(data)), config)
loss = elite.EnhancerLoss(smoke_config(gram_start_step=0), pretrained_backbone=False)
elite.train(elite.build_enhancer(config, cpu, torch.float32, models), loss, pairs, config, elite.Path(run_dir),
            elite.start_record(elite.Path(run_dir), config), cpu, torch.float32, lambda step, rows: 0.0)
"""

@pytest.mark.slow  # a second Python process: about 15 s
def test_a_run_stopped_in_one_process_ends_in_another_with_the_weights_of_a_run_that_never_stopped(
        run, straight, tiny_model_dir, tmp_path, capsys):
    first = subprocess.run([sys.executable, "-c", CROSS_PROCESS, str(Path(__file__).parent), str(run.source),
                            str(tiny_model_dir), str(tmp_path / "data"), str(tmp_path / "run")],
                           capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert first.returncode == 0 and log_steps(tmp_path / "run") == [0, 1, 2], first.stderr[-3000:]
    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # this process's random state: any
    summary = run(smoke_config(**FAST, train_steps=4, checkpoint_every=2), tmp_path / "run")  # it continues
    assert "Resuming from step 2" in capsys.readouterr().out and log_steps(tmp_path / "run") == [0, 1, 2, 3, 4]
    assert (summary["steps"], summary["history"]) == (4, [{"step": 2, "field": "train_steps", "old": 2, "new": 4}])
    resumed, never_stopped = (checkpoint_weights(folder / "checkpoints" / "step_000004.pt")
                              for folder in (tmp_path / "run", straight))
    assert resumed.keys() == never_stopped.keys() and all(  # equal to float rounding (here: bit for bit)
        torch.allclose(resumed[name], never_stopped[name], rtol=1e-6, atol=1e-8) for name in resumed)
