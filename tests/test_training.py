"""Training steps, rates, checkpoints (atomic, pruned, never non-finite) and a bit-exact resume."""
import collections
import copy
import json
import math
import random
import shutil
import types

import numpy as np
import pytest
import torch

from notebook_library import checkpoint_weights, elite, smoke_config

CPU, FP32 = torch.device("cpu"), torch.float32
EVERY_STEP = dict(checkpoint_every=100, checkpoint_minutes=1e-9, keep_checkpoints=10)  # saved by the clock alone
FAST = dict(gradient_checkpointing=False)  # the same numbers, without recomputing activations
NO_SCALER = torch.amp.GradScaler("cpu", enabled=False)  # fp32 (or bf16): no loss scale

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
    train.loss, train.pairs = loss, lambda config: elite.ImagePairs(subset, config)
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

def step_4_equal(a, b) -> bool:
    x, y = (checkpoint_weights(run_dir / "checkpoints" / "step_000004.pt") for run_dir in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[name], y[name]) for name in x)

def copy_run(source, target, drop_steps):
    shutil.copytree(source, target, dirs_exist_ok=True)
    for step in drop_steps:
        (target / "checkpoints" / f"step_{step:06d}.pt").unlink()

def save(folder, step, enhancer, config):
    return elite.save_checkpoint(folder, step, enhancer, elite.make_optimizer(enhancer, config, CPU), NO_SCALER,
                                 config)

def restore(folder, enhancer, scaler=NO_SCALER) -> int:
    return elite.restore_checkpoint(folder, enhancer, elite.make_optimizer(enhancer, smoke_config(), CPU), scaler)

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

def test_resume_is_bit_identical_to_a_straight_run(run, straight, tmp_path, capsys):
    run(smoke_config(**FAST, train_steps=2, checkpoint_every=2), tmp_path)
    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # a new session's random state
    summary = run(smoke_config(**FAST, train_steps=4, checkpoint_every=2), tmp_path)
    assert "Resuming from step 2" in capsys.readouterr().out
    assert (summary["steps"], summary["trained_this_session"], summary["history"]) == (
        4, 2, [{"step": 2, "field": "train_steps", "old": 2, "new": 4}])
    assert step_4_equal(straight, tmp_path)
    assert log_steps(tmp_path) == [0, 1, 2, 3, 4]  # the first session's final row (2) rewritten, none twice

def test_checkpoint_minutes_saves_every_step_and_a_resume_from_step_1_ends_the_same(run, straight, tmp_path):
    assert names(straight / "checkpoints") == [f"step_{step:06d}.pt" for step in (1, 2, 3, 4)]
    copy_run(straight, tmp_path, drop_steps=(2, 3, 4))
    run(smoke_config(**FAST, **EVERY_STEP), tmp_path)
    assert step_4_equal(straight, tmp_path)
    assert log_steps(tmp_path) == [0, 1, 2, 3, 4]  # the rows from step 1 on rewritten, none twice

def test_a_changed_training_setting_is_printed_and_recorded_with_its_step(run, straight, tmp_path, capsys):
    copy_run(straight, tmp_path, drop_steps=(3, 4))
    with pytest.raises(Stop):  # at step 2's validation, after the resume
        run(smoke_config(**FAST, **EVERY_STEP, learning_rate=5e-5), tmp_path, validate=stop)
    assert "From step 2 on: learning_rate 0.0001 -> 5e-05" in capsys.readouterr().out
    assert json.loads((tmp_path / "run.json").read_text())["history"] == [
        {"step": 2, "field": "learning_rate", "old": 1e-4, "new": 5e-5}]

def test_save_and_restore_round_trip_every_piece_and_a_run_without_a_loss_scale(tiny_enhancer, tmp_path):
    optimizer = elite.make_optimizer(tiny_enhancer, smoke_config(), CPU)
    params = [param for param in tiny_enhancer.parameters() if param.requires_grad]
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()  # moments to store
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    elite.save_checkpoint(tmp_path, 2, tiny_enhancer, optimizer, scaler, smoke_config())
    following = (random.random(), np.random.rand(), torch.rand(3))  # what the saved states draw next
    weights, moments = elite.trainable_tensors(tiny_enhancer), copy.deepcopy(optimizer.state_dict()["state"])
    for param in params:
        param.data.add_(1.0)
    fresh_optimizer, fresh_scaler = elite.make_optimizer(tiny_enhancer, smoke_config(), CPU), torch.amp.GradScaler(
        "cpu")
    assert elite.restore_checkpoint(tmp_path, tiny_enhancer, fresh_optimizer, fresh_scaler) == 2
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

def test_a_streak_of_nonfinite_losses_stops_training_naming_the_newest_checkpoint(run, straight, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setattr(elite, "MAX_NONFINITE_STEPS", 2)
    copy_run(straight, tmp_path, drop_steps=(3, 4))
    with pytest.raises(FloatingPointError, match=r"2 steps in a row were non-finite \(the last: step 3\)\. Lower "
                                                 r"learning_rate.*continues from step_000002\.pt"):
        run(smoke_config(**FAST, train_steps=6), tmp_path,
            wrap=lambda loss_fn: lambda *args: (terms := loss_fn(*args)) | {"total": terms["total"] * math.nan})
    assert names(tmp_path / "checkpoints") == ["step_000001.pt", "step_000002.pt"]
    assert [(row["step"], row["skipped"]) for row in elite.read_log(tmp_path / "training_log.csv")][2:] == [
        ("2", "True"), ("3", "True")]

def test_an_update_with_nonfinite_gradients_is_skipped_without_a_loss_scaler():
    model = torch.nn.Sequential(collections.OrderedDict(skip_convs=torch.nn.Linear(3, 3)))  # one group
    before, x = model.skip_convs.weight.detach().clone(), torch.ones(2, 3)

    def loss_fn(enhanced, clean, step):  # sqrt at 0: a finite loss (0) with infinite gradients
        return dict.fromkeys(elite.LOSS_TERMS, torch.sqrt(enhanced - enhanced.detach()).sum())
    optimizer = elite.make_optimizer(model, smoke_config(), CPU)
    result = elite.train_step(model, loss_fn, optimizer, NO_SCALER, x, x, 1, smoke_config(), FP32)
    assert result["total"] == 0 and result["skipped"] and result["nonfinite"]
    assert torch.equal(model.skip_convs.weight, before) and model.skip_convs.weight.grad is None
    assert not optimizer.state  # Adam never stepped

def test_the_time_estimate_counts_the_remaining_steps_and_every_evaluation_image():
    pairs = types.SimpleNamespace(test_rows=[{}] * 30, probe_families=list(elite.DEGRADATION_FAMILIES))
    config = smoke_config(train_steps=400, batch_size=2)
    # median 3 s: 389 steps left -> 19.45 min; 30 x (3 + 10) = 390 images at 3 s / (4 x 2) -> 2.4 min
    assert elite.time_estimate([2.0, 4.0, 3.0], 11, pairs, config) == (
        "3.00 s/step (median of 3): about 19 min of training to go, then about 2 min of evaluation (390 images)")
    without_probe = elite.time_estimate([3.0], 11, pairs, smoke_config(train_steps=400, single_family_probe=False))
    assert without_probe.endswith("about 1 min of evaluation (90 images)")  # 90 x 3 s / 8 = 34 s: 0.56 min

def test_out_of_memory_becomes_advice_naming_batch_size_and_resolution():
    with pytest.raises(RuntimeError, match=r"out of memory at 64² with batch_size=3.*Lower batch_size.*resolution"), \
            elite.out_of_memory_advice(smoke_config(batch_size=3), CPU):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(ValueError, match="other"), elite.out_of_memory_advice(smoke_config(), CPU):
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
    assert names(tmp_path) == [".step_000004.pt.partial", "step_000002.pt"]
    next(param for param in tiny_enhancer.parameters() if param.requires_grad).data.view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"Not saving step 6.*Lower learning_rate.*continues from "
                                                 r"step_000002\.pt"):
        save(tmp_path, 6, tiny_enhancer, config)
    assert names(tmp_path) == [".step_000004.pt.partial", "step_000002.pt"]
    assert restore(tmp_path, tiny_enhancer) == 2
