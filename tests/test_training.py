"""Training step, checkpoints (atomic, rotated, validated) and bit-exact resume."""
import copy
import csv
import functools
import json

import pytest
import torch

from notebook_library import as_skip_convs, elite, smoke_config

CPU, FP32 = torch.device("cpu"), torch.float32


@pytest.fixture(scope="module")
def pairs_factory(tmp_path_factory):
    source = str(elite.write_synthetic_celeba(tmp_path_factory.mktemp("faces"), 12, 96, seed=0))
    subset = elite.build_subset(smoke_config(), source, tmp_path_factory.mktemp("data"))

    def make(config):
        return elite.ImagePairs(subset, config)
    return make


@functools.cache
def loss_network() -> "elite.EnhancerLoss":
    """One loss network for the module: it is frozen and stateless, and a random VGG16 takes 1.5 s to build."""
    return elite.EnhancerLoss(smoke_config(), pretrained_backbone=False)


def fresh_run(tiny_model_dir, config):
    """Enhancer and loss built the same way every time (seeded), as a new process would."""
    torch.manual_seed(0)
    enhancer = elite.build_enhancer(config, CPU, FP32, str(tiny_model_dir))
    loss_fn = copy.copy(loss_network())  # shares the VGG16, weighs the terms by this config
    loss_fn.config = config
    return enhancer, loss_fn


class ChangedLoss(torch.nn.Module):
    """The loss network with another forward(enhanced, clean, step); its terms and weights, which the step-0 loss
    balance reads, as they are."""

    def __init__(self, loss_fn, forward):
        super().__init__()
        self.changed_forward, self.terms, self.weights = forward, loss_fn.terms, loss_fn.weights

    def forward(self, enhanced, clean, step):
        return self.changed_forward(enhanced, clean, step)


def trainable(enhancer) -> dict:
    return {n: p.detach().clone() for n, p in enhancer.named_parameters() if p.requires_grad}


def train(enhancer, loss_fn, pairs, config, run_dir, on_eval=None) -> dict:
    """The notebook's train() on a run directory started like the parameters cell starts it."""
    record = elite.start_run(run_dir, config)
    return elite.train(enhancer, loss_fn, pairs, config, run_dir, record, CPU, FP32, on_eval=on_eval)


def test_training_learns_a_fixed_batch_with_every_term_on_and_moves_every_group(tiny_model_dir, pairs_factory):
    rate = 3e-3  # raised: a dozen steps must show it
    config = smoke_config(learning_rate=rate, conv_in_learning_rate=rate, lr_warmup_steps=1, lr_schedule="constant",
                          l1_weight=1.0, lpips_weight=1.0, gram_weight=1.0, gram_start_step=0)
    enhancer, loss_fn = fresh_run(tiny_model_dir, config)
    before = trainable(enhancer)
    degraded, clean, _ = pairs_factory(config).train_batch(0)  # one batch of 2 pairs, again and again
    optimization = elite.Optimization.create(enhancer, config, CPU, FP32)
    losses = [elite.train_step(enhancer, loss_fn, optimization, [(degraded, clean)], step, config, FP32)
              for step in range(12)]
    assert all(losses[0][name] > 0 for name in elite.LOSS_NAMES)
    assert losses[-1]["total"] <= 0.5 * losses[0]["total"], [round(loss["total"], 3) for loss in losses]
    after = trainable(enhancer)
    moved = {elite.parameter_group(name) for name in before if not torch.equal(before[name], after[name])}
    assert moved == set(elite.PARAMETER_GROUPS)


def test_conv_in_has_its_own_learning_rate(tiny_enhancer):
    config = smoke_config(learning_rate=1e-3, conv_in_learning_rate=1e-5, lr_warmup_steps=1)
    optimization = elite.Optimization.create(tiny_enhancer, config, CPU, FP32)
    groups = {group["name"]: group for group in optimization.optimizer.param_groups}
    assert list(groups) == list(elite.PARAMETER_GROUPS)
    factor = elite.lr_factor(3, config)
    assert optimization.apply_settings(3, config) == 1e-3 * factor
    assert {name: group["lr"] for name, group in groups.items()} == {
        "unet_lora": 1e-3 * factor, "unet_conv_in": 1e-5 * factor, "vae_decoder_lora": 1e-3 * factor,
        "skip_convs": 1e-3 * factor}
    conv_in = {id(param) for name, param in tiny_enhancer.named_parameters() if name.startswith("unet.conv_in.")}
    assert {id(param) for param in groups["unet_conv_in"]["params"]} == conv_in and len(conv_in) == 2


class Disconnect(Exception):
    """Stands in for a Colab disconnect in the middle of training."""


def stop_at(stop_step):
    def on_eval(step, log):
        if step == stop_step:
            raise Disconnect
        return 0.0
    return on_eval


def test_resume_is_bit_identical_to_a_straight_run(tiny_model_dir, pairs_factory, tmp_path):
    config = smoke_config(train_steps=3, checkpoint_every=2, eval_every=1, lr_warmup_steps=2, batch_size=1,
                          gradient_accumulation_steps=2)  # two micro-batches per step: the same work as batch 2
    straight, loss_fn = fresh_run(tiny_model_dir, config)
    train(straight, loss_fn, pairs_factory(config), config, tmp_path / "straight")

    interrupted, loss_fn = fresh_run(tiny_model_dir, config)
    with pytest.raises(Disconnect):  # stops at step 2, after the step-2 checkpoint
        train(interrupted, loss_fn, pairs_factory(config), config, tmp_path / "resumed", on_eval=stop_at(2))
    resumed, loss_fn = fresh_run(tiny_model_dir, config)
    torch.manual_seed(123)  # a new process has other RNG state; the checkpoint restores it
    summary = train(resumed, loss_fn, pairs_factory(config), config, tmp_path / "resumed", on_eval=stop_at(-1))

    assert summary["trained_this_session"] == 1 and summary["steps"] == 3
    assert set(summary["loss_balance"]) == {"0", str(config.gram_start_step)}  # measured by the first session
    a, b = trainable(straight), trainable(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with open(tmp_path / "resumed" / "training_log.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row["total"]]
    assert steps == list(range(3))


def test_training_further_continues_with_the_new_schedule_and_records_it(tiny_model_dir, pairs_factory, tmp_path):
    short = smoke_config(train_steps=2, checkpoint_every=2)
    enhancer, loss_fn = fresh_run(tiny_model_dir, short)
    train(enhancer, loss_fn, pairs_factory(short), short, tmp_path)
    longer = smoke_config(train_steps=4, checkpoint_every=2, lr_schedule="constant")
    enhancer, loss_fn = fresh_run(tiny_model_dir, longer)
    summary = train(enhancer, loss_fn, pairs_factory(longer), longer, tmp_path)
    with open(tmp_path / "training_log.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["total"]]
    assert summary["trained_this_session"] == 2 and [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[2]["lr"]) == longer.learning_rate  # not the finished run's final 0
    assert summary["history"] == [{"step": 2, "field": "train_steps", "old": 2, "new": 4},
                                  {"step": 2, "field": "lr_schedule", "old": "cosine", "new": "constant"}]


def test_a_changed_weight_decay_reaches_the_restored_optimizer(tiny_model_dir, pairs_factory, tmp_path):
    config = smoke_config(train_steps=2, checkpoint_every=2)
    enhancer, loss_fn = fresh_run(tiny_model_dir, config)
    train(enhancer, loss_fn, pairs_factory(config), config, tmp_path)
    changed = smoke_config(train_steps=2, weight_decay=0.5, learning_rate=3e-4)
    enhancer, _ = fresh_run(tiny_model_dir, changed)
    optimization = elite.Optimization.create(enhancer, changed, CPU, FP32)
    assert elite.restore_newest_checkpoint(tmp_path / "checkpoints", changed, enhancer, optimization) == 2
    rate = optimization.apply_settings(2, changed)
    assert rate == 3e-4 * elite.lr_factor(2, changed)
    assert {(g["lr"], g["weight_decay"]) for g in optimization.optimizer.param_groups} == {(rate, 0.5)}


def save(folder, step, enhancer, config):
    optimization = elite.Optimization.create(enhancer, config, CPU, FP32)
    return elite.save_checkpoint(folder, step, enhancer, optimization, config)


def test_round_trip_restores_every_piece(tiny_model_dir, pairs_factory, tmp_path):
    config = smoke_config(train_steps=3)
    enhancer, loss_fn = fresh_run(tiny_model_dir, config)
    train(enhancer, loss_fn, pairs_factory(config), config, tmp_path)
    state = elite.load_latest_checkpoint(tmp_path / "checkpoints", config)
    assert state["step"] == 3 and state["format"] == elite.CHECKPOINT_FORMAT
    assert state["identity"] == elite.run_identity(config) and state["config"]["train_steps"] == 3
    assert set(state) == {"format", "step", "config", "identity", "trainable", "optimizer", "scaler", "rng"}
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    other, _ = fresh_run(tiny_model_dir, config)
    optimization = elite.Optimization.create(other, config, CPU, FP32)
    torch.manual_seed(99)
    assert elite.restore_newest_checkpoint(tmp_path / "checkpoints", config, other, optimization) == 3
    assert all(torch.equal(trainable(enhancer)[k], v) for k, v in trainable(other).items())
    assert len(optimization.optimizer.state) == len(trainable(other))
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])


def test_rotation_keeps_the_newest(tiny_enhancer, tmp_path):
    config = smoke_config(keep_checkpoints=2)
    for step in (2, 4, 6, 8):
        save(tmp_path, step, tiny_enhancer, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000006.pt", "step_000008.pt"]


def test_truncated_newest_checkpoint_is_skipped(tiny_enhancer, tmp_path):
    config = smoke_config(keep_checkpoints=3)
    save(tmp_path, 2, tiny_enhancer, config)
    newest = save(tmp_path, 4, tiny_enhancer, config)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="step_000004"):
        assert elite.load_latest_checkpoint(tmp_path, config)["step"] == 2


def test_pruning_keeps_a_readable_checkpoint_over_an_unreadable_newer_one(tiny_model_dir, pairs_factory, tmp_path):
    config = smoke_config(train_steps=2, checkpoint_every=2, keep_checkpoints=1)
    enhancer, loss_fn = fresh_run(tiny_model_dir, config)
    corrupt = save(tmp_path / "checkpoints", 6, enhancer, config)
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])  # cut off, as by a disconnect
    elite.write_json(tmp_path / "run.json", elite.new_run_record(config))
    with pytest.warns(UserWarning, match="step_000006"):
        train(enhancer, loss_fn, pairs_factory(config), config, tmp_path)
    assert [path.name for path in elite.list_checkpoints(tmp_path / "checkpoints")] == ["step_000002.pt"]
    assert elite.load_latest_checkpoint(tmp_path / "checkpoints", config)["step"] == 2


def test_a_checkpoint_that_does_not_read_back_is_not_counted(tiny_enhancer, tmp_path, monkeypatch):
    config = smoke_config(keep_checkpoints=1)
    save(tmp_path, 2, tiny_enhancer, config)

    def unreadable(path):
        raise EOFError("Drive lost the end of the file")
    monkeypatch.setattr(elite, "read_checkpoint", unreadable)
    with pytest.raises(OSError, match="did not read back.*older checkpoints are kept"):
        save(tmp_path, 4, tiny_enhancer, config)
    monkeypatch.undo()
    assert elite.load_latest_checkpoint(tmp_path, config)["step"] == 4  # nothing pruned: step 2 is still there
    assert (tmp_path / "step_000002.pt").exists()


def test_nonfinite_weights_are_never_saved(tiny_enhancer, tmp_path):
    config = smoke_config()
    save(tmp_path, 2, tiny_enhancer, config)
    next(p for p in tiny_enhancer.parameters() if p.requires_grad).data[0] = float("nan")
    with pytest.raises(FloatingPointError, match="Not saving step 4.*continues from step_000002.pt"):
        save(tmp_path, 4, tiny_enhancer, config)
    assert [path.name for path in elite.list_checkpoints(tmp_path)] == ["step_000002.pt"]


def test_a_checkpoint_of_another_notebook_version_is_refused_and_kept(tiny_enhancer, tmp_path):
    config = smoke_config(keep_checkpoints=1)
    older = save(tmp_path, 2, tiny_enhancer, config)
    state = torch.load(older, weights_only=True)
    torch.save({**state, "format": elite.CHECKPOINT_FORMAT - 1}, older)  # as the version before would have written
    with pytest.raises(elite.OtherFormatError, match=r"another version of this notebook.*format 2.*kept"):
        elite.load_latest_checkpoint(tmp_path, config)
    assert elite.newest_checkpoint_name(tmp_path).startswith("none yet")
    elite.prune_checkpoints(tmp_path, keep=1)
    assert older.exists()


def test_mismatched_checkpoint_is_refused_with_field_names(tiny_enhancer, tmp_path):
    save(tmp_path, 2, tiny_enhancer, smoke_config())
    with pytest.raises(ValueError, match=r"resolution: 64 -> 128.*unet_lora_rank: 8 -> 4"):
        elite.load_latest_checkpoint(tmp_path, smoke_config(unet_lora_rank=4, resolution=128))


def test_a_short_streak_of_nonfinite_losses_stops_training_and_names_the_last_checkpoint(tiny_model_dir,
                                                                                        pairs_factory, tmp_path):
    config = smoke_config(train_steps=12, checkpoint_every=2)
    enhancer, loss_fn = fresh_run(tiny_model_dir, config)

    def diverging(enhanced, clean, step):
        terms = loss_fn(enhanced, clean, step)
        return terms | {"total": terms["total"] * (float("nan") if step >= 3 else 1.0)}
    with pytest.raises(FloatingPointError, match=r"5 steps in a row.*at step 7.*continues from step_000006.pt"):
        train(enhancer, ChangedLoss(loss_fn, diverging), pairs_factory(config), config, tmp_path)  # default streak
    checkpoints = elite.list_checkpoints(tmp_path / "checkpoints")
    assert [path.name for path in checkpoints] == ["step_000004.pt", "step_000006.pt"]
    with open(tmp_path / "training_log.csv") as handle:  # the step that ended the streak is logged too
        assert [row["step"] for row in csv.DictReader(handle)][-1] == "7"
    assert all(elite.first_nonfinite(elite.read_checkpoint(path)["trainable"]) is None for path in checkpoints)


def test_an_update_with_nonfinite_gradients_is_skipped_without_a_loss_scaler():
    layer = torch.nn.Linear(3, 3)
    before = layer.weight.detach().clone()
    optimization = elite.Optimization.create(as_skip_convs(layer), smoke_config(), CPU, FP32)  # fp32: the scaler is off
    loss = torch.sqrt(layer.weight - layer.weight.detach()).sum()  # finite (0), with infinite gradients
    optimization.backward(loss)
    applied, scale = optimization.step(grad_clip=1.0)
    assert torch.isfinite(loss) and not applied and scale == 1.0
    assert torch.equal(layer.weight, before) and layer.weight.grad is None


@pytest.mark.parametrize("step, expected", [(0, 0.5), (1, 1.0), (2, 1.0), (6, 0.5), (10, 0.0)])
def test_learning_rate_warmup_then_cosine(step, expected):
    config = smoke_config(lr_warmup_steps=2, train_steps=10, lr_schedule="cosine")
    assert elite.lr_factor(step, config) == pytest.approx(expected)


def test_prefetching_yields_every_step_in_order():
    seen = list(elite.prefetched(lambda step: (step, step * step), range(3, 9), ahead=2))
    assert seen == [(step, (step, step * step)) for step in range(3, 9)]
    assert list(elite.prefetched(lambda step: step, range(0))) == []


def prefetch_threads() -> list:
    import threading
    return [thread for thread in threading.enumerate() if thread.name.startswith("prefetch")]


def test_an_interrupted_loop_stops_the_prefetch_threads(tiny_model_dir, pairs_factory, tmp_path):
    config = smoke_config(train_steps=6, eval_every=1)
    enhancer, loss_fn = fresh_run(tiny_model_dir, config)

    def stop(step, rows):
        if step == 2:
            assert prefetch_threads()  # the next batches are being prepared
            raise KeyboardInterrupt
        return 0.0
    with pytest.raises(KeyboardInterrupt):
        train(enhancer, loss_fn, pairs_factory(config), config, tmp_path, on_eval=stop)
    assert prefetch_threads() == []


SAVE_FOREVER = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {tests!r})
from notebook_library import as_skip_convs, elite, smoke_config
config, folder = smoke_config(keep_checkpoints=100), Path({folder!r})
model = as_skip_convs(torch.nn.Linear(4, 4))
elite.save_checkpoint(folder, 2, model, elite.Optimization.create(model, config, torch.device("cpu"), torch.float32),
                      config)
big = as_skip_convs(torch.nn.Linear(6000, 6000))  # about 140 MB: slow enough to be killed mid-write
optimization = elite.Optimization.create(big, config, torch.device("cpu"), torch.float32)
for step in range(4, 1000, 2):
    elite.save_checkpoint(folder, step, big, optimization, config)
"""


def big_write_in_progress(folder) -> bool:
    """A partial file of one of the 140 MB checkpoints (step 4 on) is on disk and growing."""
    for path in folder.glob(".step_*.pt.partial"):
        try:
            if path.name != ".step_000002.pt.partial" and path.stat().st_size > 0:
                return True
        except FileNotFoundError:  # renamed into place between glob and stat
            pass
    return False


def test_killing_the_process_during_a_save_leaves_a_loadable_checkpoint(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path
    folder = tmp_path / "checkpoints"
    script = SAVE_FOREVER.format(tests=str(Path(__file__).parent), folder=str(folder))
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not big_write_in_progress(folder) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.005)
    process.kill()
    process.wait()
    partial = next(folder.glob(".*.partial"))  # killed in the middle of this write
    complete = elite.list_checkpoints(folder)
    state = elite.load_latest_checkpoint(folder, smoke_config())
    assert state["step"] == int(complete[-1].stem.split("_")[1]) < int(partial.name.split("_")[1].split(".")[0])


def test_out_of_memory_stops_with_the_knobs_to_turn(tiny_model_dir, pairs_factory, tmp_path):
    config = smoke_config(train_steps=2)
    enhancer, loss_fn = fresh_run(tiny_model_dir, config)

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")
    for balance_fits in (False, True):  # the step-0 loss balance runs out, or the first training step does
        exhausting = ChangedLoss(loss_fn, exhausted)
        if not balance_fits:
            exhausting.terms = exhausted
        with pytest.raises(RuntimeError, match="out of memory.*batch_size=2.*Lower batch_size, lower resolution"):
            train(enhancer, exhausting, pairs_factory(config), config, tmp_path / str(balance_fits))


def test_gradient_accumulation_gathers_the_gradient_of_one_larger_batch(tiny_model_dir, pairs_factory):
    config = smoke_config(batch_size=4)
    degraded, clean, _ = pairs_factory(config).train_batch(0)
    gathered = []
    for micro_batches in ([(degraded, clean)], [(degraded[:2], clean[:2]), (degraded[2:], clean[2:])]):
        enhancer, loss_fn = fresh_run(tiny_model_dir, config)
        optimization = elite.Optimization.create(enhancer, config, CPU, FP32)
        grads = {}

        def keep_gradients(grad_clip, grads=grads, enhancer=enhancer):  # the update itself is Adam's business
            grads.update({name: p.grad.clone() for name, p in enhancer.named_parameters() if p.grad is not None})
            return True, 1.0
        optimization.step = keep_gradients
        terms = elite.train_step(enhancer, loss_fn, optimization, micro_batches, 0, config, FP32)
        gathered.append((grads, terms["total"]))
    (whole, whole_loss), (accumulated, accumulated_loss) = gathered
    assert whole.keys() == accumulated.keys() and len(whole) == len(trainable(enhancer))
    relative_error = {name: ((whole[name] - accumulated[name]).norm() / whole[name].norm()).item() for name in whole}
    assert max(relative_error.values()) < 1e-2  # float summation order only: 1/k scaling wrong would give 0.5
    assert accumulated_loss == pytest.approx(whole_loss, rel=1e-5)  # the mean of the halves' means


def test_a_step_gathers_its_micro_batches_from_consecutive_indices(pairs_factory):
    config = smoke_config(batch_size=1, gradient_accumulation_steps=3)
    pairs = pairs_factory(config)
    for step in (0, 5):
        expected = [pairs.train_batch(step * 3 + micro)[:2] for micro in range(3)]
        assert all(torch.equal(a, b) for got, want in zip(pairs.step_batches(step), expected) for a, b in zip(got, want))
    assert len(pairs_factory(smoke_config()).step_batches(0)) == 1


def test_a_run_can_move_between_precisions(tiny_enhancer):
    """bf16 on an A100 one session, fp16 on a T4 the next: the loss scale is absent, not an error."""
    config = smoke_config()
    without_scaler = elite.Optimization.create(tiny_enhancer, config, CPU, torch.bfloat16).state_dict()
    with_scaler = elite.Optimization.create(tiny_enhancer, config, CPU, torch.float16)
    assert with_scaler.scaler.is_enabled() and without_scaler["scaler"] == {}
    with_scaler.load_state_dict(without_scaler)
    assert with_scaler.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()  # a fresh scale
    elite.Optimization.create(tiny_enhancer, config, CPU, FP32).load_state_dict(with_scaler.state_dict())


def test_the_finish_estimate_reads_like_the_issue_asks():
    message = elite.finish_estimate([1.8, 2.0, 1.9, 5.0], done=4, train_steps=1500)
    assert message.startswith("1,500 steps at 1.95 s ≈ 49 min in all; 1,496 to go ≈ 49 min")


def test_the_summary_covers_every_session_and_this_one_apart():
    rows = [{"step": str(step), "total": "1.0", "seconds_per_step": str(seconds), "peak_reserved_gib": str(peak),
             "peak_allocated_gib": "1.0", "skipped": str(step == 1)}
            for step, seconds, peak in [(0, 9.0, 5.0), (1, 2.0, 6.0), (2, 2.0, 5.5), (3, 1.0, 5.0), (4, 1.0, 5.0)]]
    rows.append({"step": "5", "total": "", "seconds_per_step": "", "peak_reserved_gib": "", "peak_allocated_gib": "",
                 "skipped": ""})  # the final validation row
    record = elite.new_run_record(smoke_config(batch_size=2, gradient_accumulation_steps=3))
    summary = elite.training_summary(rows, steps=5, record=record, trained_now=2)
    assert (summary["seconds_per_step"], summary["seconds_per_step_this_session"]) == (2.0, 1.0)
    assert (summary["peak_vram_gib"], summary["skipped_steps"], summary["effective_batch_size"]) == (6.0, 1, 6)
    assert elite.training_summary(rows, 5, record, trained_now=0)["seconds_per_step_this_session"] is None


def test_metrics_are_kept_when_nothing_new_was_measured(tmp_path):
    path = tmp_path / "metrics.json"
    first = {"training": {"steps": 4, "trained_this_session": 4}, "test_set": {"n": 8}, "lpips": 0.3}
    assert elite.write_metrics(path, first) == first
    again = {"training": {"steps": 4, "trained_this_session": 0}, "test_set": {"n": 8}, "lpips": 0.3, "created": 2}
    assert elite.write_metrics(path, again) == first  # the file as it was
    further = {"training": {"steps": 6, "trained_this_session": 2}, "test_set": {"n": 8}, "lpips": 0.2}
    assert elite.write_metrics(path, further) == further and json.loads(path.read_text()) == further


def test_messages_name_the_newest_checkpoint_that_reads(tiny_enhancer, tmp_path):
    config = smoke_config(keep_checkpoints=3)
    save(tmp_path, 2, tiny_enhancer, config)
    newest = save(tmp_path, 4, tiny_enhancer, config)
    newest.write_bytes(newest.read_bytes()[:1000])
    assert elite.newest_checkpoint_name(tmp_path) == "step_000002.pt"
