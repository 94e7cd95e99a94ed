"""CPU benchmarks, not a test: the rounding error of x0 at t = 999 from fp16 inputs, and building then loading a
300-image subset at 512² from synthetic CelebA-HQ-schema parquet. One line per figure.

    python tests/benchmarks.py"""
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars between the figures
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_library import elite, smoke_config  # noqa: E402  (the notebook's export cells)

RESOLUTION, IMAGES = 512, 300

def subset_speed() -> None:
    with tempfile.TemporaryDirectory() as folder:
        source, run_dir = Path(folder) / "parquet", Path(folder) / "run"
        config = smoke_config(num_images=IMAGES, resolution=RESOLUTION, dataset=str(source))  # validates itself
        elite.write_synthetic_celeba(source, IMAGES, 2 * RESOLUTION, config.seed)  # before timing, as the Hub's file
        for label in ("build the subset (stream, shuffle, decode, resize, cache)", "load the cached subset"):
            started = time.perf_counter()
            images = elite.prepare_data(config, run_dir).images
            print(f"{label}: {time.perf_counter() - started:.2f} s for {len(images)} images at {RESOLUTION}²")
        print(f"cache: {(run_dir / 'data' / 'images.npy').stat().st_size / 2**20:.0f} MiB")

def x0_precision() -> None:
    """What computing x0 in fp32 buys at t = 999 when z and eps arrive in fp16, as autocast hands them over."""
    alpha_bar = elite.DDPMScheduler.from_config(elite.SD_TURBO_SCHEDULER).alphas_cumprod[999].double()
    generator = torch.Generator().manual_seed(0)
    clean = 0.7 * torch.randn(1, 4, 64, 64, generator=generator, dtype=torch.float64)  # the x0 to recover
    latent = torch.randn(1, 4, 64, 64, generator=generator, dtype=torch.float64)
    eps = (latent - alpha_bar.sqrt() * clean) / (1 - alpha_bar).sqrt()  # the prediction that gives it exactly
    half = elite.one_step_x0(latent.half(), eps.half(), alpha_bar.float())  # fp16 inputs, fp32 formula
    all_half = (latent.half() - (1 - alpha_bar).sqrt().half() * eps.half()) / alpha_bar.sqrt().half()
    error = lambda x: ((x.double() - clean) ** 2).mean().sqrt() / (clean ** 2).mean().sqrt()  # noqa: E731
    print(f"x0 at t = 999 from fp16 z and eps: rounding error {100 * error(half):.2f} % of its RMS with the "
          f"fp32 formula, {100 * error(all_half):.2f} % all in fp16")

if __name__ == "__main__":
    x0_precision()
    subset_speed()
