"""CPU benchmarks of the data pipeline (not a test): python tests/benchmarks.py

Prints the time per degradation family and the mixed throughput at 512² on one core, and the time to build the
cached subset from synthetic CelebA-HQ-schema parquet and to load it back."""
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
    torch.set_num_threads(1)
    config = elite.Config()
    faces = [elite.to_model_range(np.asarray(elite.synthetic_face(random.Random(k), RESOLUTION))[None])[0]
             for k in range(8)]
    for family in elite.DEGRADATION_FAMILIES:
        started = time.perf_counter()
        for k in range(10):
            elite.apply_degradation((faces[k % 8] + 1) / 2, {family: {"strength": 0.6, "seed": k}})
        print(f"{family:9s} {100 * (time.perf_counter() - started):6.1f} ms/image (strength 0.6, one thread)")
    records = [elite.sample_degradation(config, elite.generator_for(0, "bench", k)) for k in range(64)]
    started = time.perf_counter()
    for k, record in enumerate(records):
        elite.degrade_batch(faces[k % 8][None], [record])
    print(f"default mix: {len(records) / (time.perf_counter() - started):.1f} images/s on one core")


def subset_speed() -> None:
    folder = Path(tempfile.mkdtemp())
    config = elite.Config(run_mode="smoke", num_images=IMAGES, resolution=RESOLUTION)
    elite.data_source(config, folder)  # the synthetic faces, written before timing
    for label in ("build subset (stream, balance, decode, resize, cache)", "load the cached subset"):
        started = time.perf_counter()
        images, _ = elite.prepare_data(config, folder)
        print(f"{label}: {time.perf_counter() - started:.2f} s for {len(images)} images")
    print(f"cache size: {(folder / 'data' / 'images.npy').stat().st_size / 2**20:.0f} MB")


if __name__ == "__main__":
    degradation_speed()
    subset_speed()
