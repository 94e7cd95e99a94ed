"""CPU benchmarks (not a test): python tests/benchmarks.py

Prints the time per degradation family and per training batch of 2 at 512² on one core, the time to build the
cached subset from synthetic CelebA-HQ-schema parquet and to load it back, the counted work of a training step
at 512² (the T4 time budget in the README), and a profile of one training step of the real architecture at 64 px
on this CPU (what share of it is arithmetic). `python tests/benchmarks.py balance` instead prints the step-0 loss
balance of the real architecture at 512², batch 1, random weights (about 5 minutes and 12 GB here)."""
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_library import elite  # noqa: E402  (the notebook's export cells)

RESOLUTION, IMAGES = 512, 300


def degradation_speed() -> None:
    """Per family at strength 0.6, then a training batch of 2 as the default mix draws it and with every family at
    once, at 512² on one thread (what the two prefetch threads must hide behind a T4 step)."""
    torch.set_num_threads(1)
    config = elite.Config()
    faces = [elite.to_model_range(np.asarray(elite.synthetic_face(random.Random(k), RESOLUTION))[None])[0]
             for k in range(8)]
    for family in elite.DEGRADATION_FAMILIES:
        records = [{family: elite.family_parameters(config, family, 0.6, elite.generator_for("bench", family, k))}
                   for k in range(10)]
        started = time.perf_counter()
        for k, record in enumerate(records):
            elite.apply_degradation((faces[k % 8] + 1) / 2, record)
        print(f"{family:9s} {100 * (time.perf_counter() - started):6.1f} ms/image (strength 0.6, one thread)")
    mixed = [elite.sample_degradation(config, elite.generator_for(0, "bench", k)) for k in range(64)]
    every = [{family: elite.family_parameters(config, family, 0.6, elite.generator_for("every", family, k))
              for family in elite.DEGRADATION_FAMILIES} for k in range(16)]
    for label, records in (("default mix", mixed), ("every family at once", every)):
        started = time.perf_counter()
        for k in range(0, len(records), 2):
            elite.degrade_batch(torch.stack(faces[k % 8:k % 8 + 2]), records[k:k + 2])
        print(f"{label}: a batch of 2 in {2000 * (time.perf_counter() - started) / len(records):.0f} ms on one thread")


def subset_speed() -> None:
    folder = Path(tempfile.mkdtemp())
    config = elite.Config(run_mode="smoke", num_images=IMAGES, resolution=RESOLUTION)
    elite.data_source(config, folder)  # the synthetic faces, written before timing
    for label in ("build subset (stream, balance, decode, resize, cache)", "load the cached subset"):
        started = time.perf_counter()
        images = elite.prepare_data(config, folder).images
        print(f"{label}: {time.perf_counter() - started:.2f} s for {len(images)} images")
    print(f"cache size: {(folder / 'data' / 'images.npy').stat().st_size / 2**20:.0f} MB")


def work_per_step() -> None:
    for batch in (1, 2):
        config = elite.Config(run_mode="footprint", resolution=RESOLUTION, batch_size=batch)
        print(f"training step at {RESOLUTION}², batch {batch}: {elite.count_training_tflop(config):.2f} TFLOP")


def step_profile(steps: int = 3) -> None:
    """Where a training step of the real architecture (64 px, batch 1, fp32) spends its time on this CPU."""
    from torch.profiler import ProfilerActivity, profile
    torch.set_num_threads(os.cpu_count())  # degradation_speed ran on one core
    config = elite.Config(run_mode="footprint", resolution=64, batch_size=1, gram_start_step=0)
    cpu = torch.device("cpu")
    enhancer = elite.build_enhancer(config, cpu, torch.float32, source=None)
    loss_fn = elite.EnhancerLoss(config, pretrained_backbone=False)
    optimization = elite.Optimization.create(enhancer, config, cpu, torch.float32)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    elite.train_step(enhancer, loss_fn, optimization, [(images, images)], 0, config, torch.float32)  # warm-up
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for step in range(1, steps + 1):
            elite.train_step(enhancer, loss_fn, optimization, [(images, images)], step, config, torch.float32)
    wall = (time.perf_counter() - started) / steps
    events = profiler.key_averages()
    ops = sum(event.self_cpu_time_total for event in events) / steps / 1e6
    arithmetic = sum(event.self_cpu_time_total for event in events if any(
        word in event.key for word in ("conv", "mm", "addmm", "bmm", "linear"))) / steps / 1e6
    calls = sum(event.count for event in events if event.key.startswith("aten::")) / steps
    print(f"training step, real architecture, 64 px, CPU: {wall:.2f} s wall; operators {ops:.2f} s "
          f"(convolutions and matmuls {arithmetic:.2f} s); outside operators (Python, dispatch) {wall - ops:.2f} s; "
          f"{calls:,.0f} aten calls per step")


def loss_balance_at_512() -> None:
    """Each loss term's share and gradient norm on one degraded synthetic face, real architecture, random weights."""
    config = elite.Config(run_mode="footprint", resolution=RESOLUTION, batch_size=1)
    enhancer = elite.build_enhancer(config, torch.device("cpu"), torch.float32, source=None)
    loss_fn = elite.EnhancerLoss(config, pretrained_backbone=False)
    clean = elite.to_model_range(np.asarray(elite.synthetic_face(random.Random(0), RESOLUTION))[None])
    record = elite.sample_degradation(config, elite.generator_for(0, "bench", 0))
    degraded = elite.degrade_batch(clean, [record])
    print(elite.describe_record(record).replace("\n", "; "))
    print(elite.describe_balance(elite.loss_balance(enhancer, loss_fn, degraded, clean, torch.float32)))


if __name__ == "__main__" and sys.argv[1:] == ["balance"]:
    loss_balance_at_512()
elif __name__ == "__main__":
    degradation_speed()
    subset_speed()
    work_per_step()
    step_profile()
