"""Training step, checkpoints (atomic, rotated, validated) and bit-exact resume."""
import csv

import pytest
import torch

from conftest import elite, smoke_config

CPU, FP32 = torch.device("cpu"), torch.float32


@pytest.fixture(scope="module")
def pairs_factory(tmp_path_factory):
    source = str(elite.write_synthetic_celeba(tmp_path_factory.mktemp("faces"), 12, 96, seed=0))
    data_dir = tmp_path_factory.mktemp("data")

    def make(config):
        return elite.FacePairs(*elite.load_subset(config, source, data_dir), config)
    return make


def fresh_run(tiny_model_dir, config):
    """Enhancer and loss built the same way every time (seeded), as a new process would."""
    torch.manual_seed(0)
    enhancer = elite.build_enhancer(config, CPU, FP32, str(tiny_model_dir))
    return enhancer, elite.EnhancerLoss(config, pretrained_backbone=False)


def trainable(enhancer) -> dict:
    return {n: p.detach().clone() for n, p in enhancer.named_parameters() if p.requires_grad}


def test_training_steps_reduce_the_loss_on_a_fixed_pair(tiny_model_dir, pairs_factory):
    config = smoke_config(learning_rate=1e-3, lr_warmup_steps=1, lr_schedule="constant", gram_weight=0.0)
    enhancer, loss_fn = fresh_run(tiny_model_dir, config)
    degraded, clean, _ = pairs_factory(config).train_batch(0)
    optimization = elite.make_optimization(enhancer, config, CPU, FP32)
    losses = [elite.train_step(enhancer, loss_fn, *optimization, degraded, clean, step, config, FP32)["total"]
              for step in range(12)]
    assert losses[-1] < 0.9 * losses[0]


class Disconnect(Exception):
    """Stands in for a Colab disconnect in the middle of training."""


def stop_at(stop_step):
    def on_eval(step, log):
        if step == stop_step:
            raise Disconnect
        return 0.0
    return on_eval


def test_resume_is_bit_identical_to_a_straight_run(tiny_model_dir, pairs_factory, tmp_path):
    config = smoke_config(train_steps=6, checkpoint_every=2, eval_every=1, lr_warmup_steps=2)
    straight, loss_fn = fresh_run(tiny_model_dir, config)
    elite.train(straight, loss_fn, pairs_factory(config), config, tmp_path / "straight", CPU, FP32)

    interrupted, loss_fn = fresh_run(tiny_model_dir, config)
    with pytest.raises(Disconnect):  # stops during step 3, after the step-2 checkpoint
        elite.train(interrupted, loss_fn, pairs_factory(config), config, tmp_path / "resumed", CPU, FP32,
                    on_eval=stop_at(3))
    resumed, loss_fn = fresh_run(tiny_model_dir, config)
    torch.manual_seed(123)  # a new process has other RNG state; the checkpoint restores it
    summary = elite.train(resumed, loss_fn, pairs_factory(config), config, tmp_path / "resumed", CPU, FP32,
                          on_eval=stop_at(-1))

    assert summary["resumed_from"] == 2
    a, b = trainable(straight), trainable(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with open(tmp_path / "resumed" / "training_log.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row["total"]]
    assert steps == list(range(6))


def test_training_further_continues_with_the_new_schedule(tiny_model_dir, pairs_factory, tmp_path):
    short = smoke_config(train_steps=2, checkpoint_every=2)
    enhancer, loss_fn = fresh_run(tiny_model_dir, short)
    elite.train(enhancer, loss_fn, pairs_factory(short), short, tmp_path, CPU, FP32)
    longer = smoke_config(train_steps=4, checkpoint_every=2, lr_schedule="constant")
    enhancer, loss_fn = fresh_run(tiny_model_dir, longer)
    summary = elite.train(enhancer, loss_fn, pairs_factory(longer), longer, tmp_path, CPU, FP32)
    with open(tmp_path / "training_log.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["total"]]
    assert summary["resumed_from"] == 2 and [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[2]["lr"]) == longer.learning_rate  # not the finished run's final 0


def save(folder, step, enhancer, config):
    optimization = elite.make_optimization(enhancer, config, CPU, FP32)
    return elite.save_checkpoint(folder, step, enhancer, *optimization, config)


def test_round_trip_restores_every_piece(tiny_model_dir, pairs_factory, tmp_path):
    config = smoke_config(train_steps=3)
    enhancer, loss_fn = fresh_run(tiny_model_dir, config)
    elite.train(enhancer, loss_fn, pairs_factory(config), config, tmp_path, CPU, FP32)
    state = elite.load_latest_checkpoint(tmp_path / "checkpoints", config)
    assert state["step"] == 3 and state["format"] == elite.CHECKPOINT_FORMAT and state["data_position"] == 3
    assert state["config"]["train_steps"] == 3 and set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    other, _ = fresh_run(tiny_model_dir, config)
    optimizer, scaler, lr_scheduler = elite.make_optimization(other, config, CPU, FP32)
    torch.manual_seed(99)
    assert elite.restore_training_state(state, other, optimizer, scaler, lr_scheduler) == 3
    assert all(torch.equal(trainable(enhancer)[k], v) for k, v in trainable(other).items())
    assert lr_scheduler.last_epoch == 3 and len(optimizer.state) == len(trainable(other))
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


def test_interrupted_save_leaves_the_previous_checkpoint(tiny_enhancer, tmp_path):
    config = smoke_config()
    save(tmp_path, 2, tiny_enhancer, config)
    (tmp_path / ".step_000004.pt.partial").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    assert elite.load_latest_checkpoint(tmp_path, config)["step"] == 2


def test_mismatched_checkpoint_is_refused_with_field_names(tiny_enhancer, tmp_path):
    save(tmp_path, 2, tiny_enhancer, smoke_config())
    with pytest.raises(ValueError, match=r"unet_lora_rank: checkpoint 8, now 4.*resolution: checkpoint 64, now 128"):
        elite.load_latest_checkpoint(tmp_path, smoke_config(unet_lora_rank=4, resolution=128))


def test_resume_off_never_overwrites(tiny_enhancer, tmp_path):
    save(tmp_path / "checkpoints", 2, tiny_enhancer, smoke_config())
    config = smoke_config(resume=False)
    with pytest.raises(FileExistsError, match="resume is off"):
        elite.resume_step(tmp_path / "checkpoints", config, tiny_enhancer,
                          *elite.make_optimization(tiny_enhancer, config, CPU, FP32))


def test_nonfinite_losses_stop_training_without_saving(tiny_model_dir, pairs_factory, tmp_path):
    config = smoke_config(train_steps=6, checkpoint_every=100, max_nonfinite_steps=3)
    enhancer, loss_fn = fresh_run(tiny_model_dir, config)
    loss_fn.config = smoke_config(l1_weight=float("inf"))
    with pytest.raises(FloatingPointError, match="3 steps in a row"):
        elite.train(enhancer, loss_fn, pairs_factory(config), config, tmp_path, CPU, FP32)
    assert not list(tmp_path.glob("checkpoints/*.pt"))


@pytest.mark.parametrize("step, expected", [(0, 0.5), (1, 1.0), (2, 1.0), (6, 0.5), (10, 0.0)])
def test_learning_rate_warmup_then_cosine(step, expected):
    config = smoke_config(lr_warmup_steps=2, train_steps=10, lr_schedule="cosine")
    assert elite.lr_factor(step, config) == pytest.approx(expected)


def test_prefetching_yields_every_step_in_order():
    seen = list(elite.prefetched(lambda step: (step, step * step), range(3, 9), ahead=2))
    assert seen == [(step, (step, step * step)) for step in range(3, 9)]
    assert list(elite.prefetched(lambda step: step, range(0))) == []


SAVE_FOREVER = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import elite, smoke_config
config, folder = smoke_config(keep_checkpoints=100), Path({folder!r})
model = torch.nn.Linear(4, 4)
elite.save_checkpoint(folder, 2, model, *elite.make_optimization(model, config, torch.device("cpu"), torch.float32), config)
big = torch.nn.Linear(6000, 6000)  # about 140 MB: slow enough to be killed mid-write
optimization = elite.make_optimization(big, config, torch.device("cpu"), torch.float32)
for step in range(4, 1000, 2):
    elite.save_checkpoint(folder, step, big, *optimization, config)
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
    enhancer, _ = fresh_run(tiny_model_dir, config)

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(RuntimeError, match="out of memory.*batch_size=2.*Lower batch_size, lower resolution"):
        elite.train(enhancer, exhausted, pairs_factory(config), config, tmp_path, CPU, FP32)
