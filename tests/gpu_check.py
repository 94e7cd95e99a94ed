"""GPU check, not run by CI: peak memory of the step-0 loss balance and of a training step, s/step and ms/image of
the real SD-Turbo architecture with random weights (nothing is downloaded), with a T4's code paths on a bigger GPU:
fp16 autocast with a GradScaler, flash attention off globally (checkpoint recomputation runs outside any context
manager), this process capped at 14.0 GiB (a T4 reports 14.7 to PyTorch; its CUDA context takes 0.4). Batch 1 and 2;
a step's work is counted on PyTorch's meta device (published: 23.9 TFLOP at 512², batch 2), on any machine. Usage:
    HF_HUB_OFFLINE=1 python tests/gpu_check.py [--resolution 512] [--steps 12]"""
import argparse
import dataclasses
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_library import elite  # noqa: E402  (the notebook's export cells)

T4_MEMORY_GIB = 14.0
WARMUP_STEPS = 2  # left out of the median
PUBLISHED_TFLOP = 23.9  # notebook and README: one training step at 512², batch 2
BATCHES = (1, 2)

def measured_config(resolution: int, batch: int) -> elite.Config:
    """Defaults with Gram on from step 0 (the late-training step; the term is computed from step 0 anyway)."""
    return elite.Config(resolution=resolution, batch_size=batch, gram_start_step=0)

def random_enhancer(config: elite.Config, device: torch.device, dtype: torch.dtype) -> elite.OneStepEnhancer:
    """The notebook's enhancer around SD-Turbo's real architecture with random weights and a random prompt."""
    with elite.seeded(config.seed):
        unet = elite.UNet2DConditionModel(**elite.SD_TURBO_UNET).to(device, dtype) if config.use_unet else None
        vae = elite.AutoencoderKL(**elite.SD_TURBO_VAE).to(device, dtype)
        prompt = torch.randn(1, elite.PROMPT_LENGTH, elite.SD_TURBO_UNET["cross_attention_dim"], device=device)
    alphas = elite.DDPMScheduler.from_config(elite.SD_TURBO_SCHEDULER).alphas_cumprod
    enhancer = elite.OneStepEnhancer(unet, vae, prompt, alphas, config.timestep, config.skip_connections,
                                     config.gradient_checkpointing)
    return elite.make_trainable(enhancer.to(device), config)

def meta_model(config: elite.Config) -> tuple:
    """The real enhancer and its loss on the meta device: shapes only, no memory or arithmetic."""
    meta = torch.device("meta")
    with meta:
        enhancer = random_enhancer(config, meta, torch.float32)
        return enhancer, elite.EnhancerLoss(config, pretrained_backbone=False).to(meta)  # lpips makes CPU buffers

def count_training_tflop(config: elite.Config, model: tuple | None = None) -> float:
    """TFLOP of one optimizer step of the real enhancer (forward, loss, backward, checkpoint recomputation),
    counted on the meta device, so it runs on any machine; `model` (from meta_model) if built already."""
    enhancer, loss_fn = model or meta_model(config)
    meta = torch.device("meta")
    images = torch.zeros(config.batch_size, 3, config.resolution, config.resolution, device=meta)
    with FlopCounterMode(display=False) as counter:
        loss_fn(enhancer(images), images, config.gram_start_step)["total"].backward()
    return counter.get_total_flops() / 1e12

def t4_code_paths(device: torch.device) -> torch.dtype:
    """A T4's code paths on this GPU: flash attention off for the whole process and memory capped at 14.0 GiB; the
    T4's compute dtype (fp16, used with a GradScaler) is returned."""
    torch.backends.cuda.enable_flash_sdp(False)  # globally: checkpoint recomputation ignores context managers
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(T4_MEMORY_GIB * 2**30 / total, index)
    return torch.float16

def peak_gib(device: torch.device) -> tuple[float, float]:
    """Peak (reserved, allocated) GiB since the last reset."""
    return torch.cuda.max_memory_reserved(device) / 2**30, torch.cuda.max_memory_allocated(device) / 2**30

def training_figures(config: elite.Config, device: torch.device, dtype: torch.dtype, steps: int) -> dict:
    """Peak GiB of the step-0 loss balance, then median s/step after the warm-up and peak GiB of `steps` training
    steps on random images (the notebook's order), then merged inference ms/image at 1 and 4 UNet passes."""
    gc.collect()  # the model of the batch before
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    enhancer = random_enhancer(config, device, dtype)
    loss_fn = elite.EnhancerLoss(config, pretrained_backbone=False).to(device)
    generator = torch.Generator(device).manual_seed(config.seed)
    shape = (config.batch_size, 3, config.resolution, config.resolution)
    elite.loss_balance(enhancer, loss_fn, *(torch.rand(shape, generator=generator, device=device) * 2 - 1
                                            for _ in range(2)), dtype)
    figures = {"balance_gib": peak_gib(device)}
    torch.cuda.empty_cache()  # the balance's cached blocks would otherwise count as the steps' reserved peak
    torch.cuda.reset_peak_memory_stats(device)
    optimizer = elite.make_optimizer(enhancer, config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=True)
    durations = []
    for step in range(steps):
        degraded, clean = (torch.rand(shape, generator=generator, device=device) * 2 - 1 for _ in range(2))
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        elite.train_step(enhancer, loss_fn, optimizer, scaler, degraded, clean, step, config, dtype)
        torch.cuda.synchronize(device)
        durations.append(time.perf_counter() - started)
    figures |= {"s_per_step": statistics.median(durations[WARMUP_STEPS:]), "step_gib": peak_gib(device)}
    image = torch.rand(shape[1:], generator=generator, device=device) * 2 - 1
    for layer in enhancer.modules():  # merged for good, as load_adapter leaves the evaluated model
        if isinstance(layer, elite.BaseTunerLayer):
            layer.merge()
    figures["ms"] = elite.time_inference(enhancer, image, device, dtype, passes=(1, 4))["ms_by_unet_passes"]
    return figures

def table_row(gpu: str, batch: int, tflop: float, figures: dict) -> str:
    seconds, ms = figures["s_per_step"], figures["ms"]
    peaks = " | ".join(f"{reserved:.2f} ({allocated:.2f})" for reserved, allocated in (figures["balance_gib"],
                                                                                         figures["step_gib"]))
    return (f"| {gpu} | {batch} | {peaks} | {seconds:.2f} | {tflop:.2f} | {tflop / seconds:.1f} | {ms['1']:.0f} "
            f"| {ms['4']:.0f} |")

def main(resolution: int, steps: int) -> None:
    if steps <= WARMUP_STEPS:
        sys.exit(f"--steps {steps}: need more than the {WARMUP_STEPS} warm-up steps")
    tflop = {}
    for batch in BATCHES:
        tflop[batch] = count_training_tflop(measured_config(resolution, batch))
        print(f"one training step at {resolution}², batch {batch}: {tflop[batch]:.2f} TFLOP (meta device)"
              + (f"; published: {PUBLISHED_TFLOP}" if (resolution, batch) == (512, 2) else ""), flush=True)
    for ablation in ({"use_unet": False}, {"skip_connections": False}):  # t = 199 and Gram 0 do the same work
        config = dataclasses.replace(measured_config(resolution, BATCHES[-1]), **ablation)
        print(f"  the ablation {ablation}: {count_training_tflop(config):.2f} TFLOP", flush=True)
    if not torch.cuda.is_available():
        sys.exit("No CUDA GPU: the FLOP count above is all this machine can measure.")
    device = torch.device("cuda", torch.cuda.current_device())
    dtype = t4_code_paths(device)
    gpu = torch.cuda.get_device_name(device)
    rows = []
    for batch in BATCHES:
        try:
            rows.append(table_row(gpu, batch, tflop[batch], training_figures(
                measured_config(resolution, batch), device, dtype, steps)))
        except torch.OutOfMemoryError:
            rows.append(f"| {gpu} | {batch} | over {T4_MEMORY_GIB:g} (out of memory) | | | {tflop[batch]:.2f} | | | |")
        print(rows[-1], flush=True)
    print(f"\n{resolution}², T4 code paths (fp16 + GradScaler, flash attention off, {T4_MEMORY_GIB:g} GiB cap), "
          f"random weights, median of {steps - WARMUP_STEPS} steps after {WARMUP_STEPS} warm-up; merged LoRA:\n")
    print("| GPU | batch | loss balance: peak reserved (allocated) GiB | training step: peak reserved (allocated) GiB "
          "| s/step | TFLOP/step | achieved TFLOP/s | ms/image (1 pass) | ms/image (4 passes) |\n" + "|---" * 9 + "|\n"
          + "\n".join(rows))

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12, help="training steps per batch size, the first 2 warm-up")
    main(**vars(parser.parse_args()))
