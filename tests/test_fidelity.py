"""The enhancer built from SD-Turbo's real configs (random weights, 64 px): shapes and the trainable set.
Gradients and merged inference are checked on it in test_model.py (any_enhancer)."""
import pytest
import torch

from notebook_library import elite

pytestmark = pytest.mark.slow  # real_enhancer (conftest) builds the full-size model


def wrapped_modules(enhancer, prefix: str) -> set[str]:
    return {n.rsplit(".lora_A", 1)[0] for n, _ in enhancer.named_parameters() if ".lora_A." in n and n.startswith(prefix)}


def base_modules(enhancer, prefix: str, targets, under: str = "") -> set[str]:
    """Linear/Conv2d modules of the original model (LoRA's base layers included) that the targets select."""
    names = set()
    for name, module in enhancer.named_modules():
        name = name.removesuffix(".base_layer")
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.startswith(prefix + under) \
                and ".lora_" not in name and any(name.endswith(f".{t}") for t in targets):
            names.add(name)
    return names


def test_skip_convs_have_the_derived_shapes(real_enhancer):
    shapes = [tuple(conv.weight.shape) for conv in real_enhancer.skip_convs]
    assert shapes == [(512, 512, 1, 1), (512, 256, 1, 1), (512, 128, 1, 1), (256, 128, 1, 1)]
    assert all(torch.all(conv.weight == elite.SKIP_INIT) and conv.bias is None for conv in real_enhancer.skip_convs)


def test_lora_sits_exactly_on_the_pix2pix_turbo_targets(real_enhancer):
    unet = wrapped_modules(real_enhancer, "unet.")
    vae = wrapped_modules(real_enhancer, "vae.")
    assert unet == base_modules(real_enhancer, "unet", elite.UNET_LORA_TARGETS) and len(unet) == 257
    # pix2pix-turbo wraps 43 decoder modules: these 39 plus its 4 skip convs, which are fully trained here
    assert vae == base_modules(real_enhancer, "vae", elite.VAE_LORA_TARGETS, ".decoder.") and len(vae) == 39


def test_no_encoder_parameter_is_trainable_or_wrapped(real_enhancer):
    encoder = [(n, p) for n, p in real_enhancer.named_parameters() if n.startswith(("vae.encoder.", "vae.quant_conv."))]
    assert encoder and not any(p.requires_grad or "lora" in n for n, p in encoder)


def test_parameter_counts_per_group(real_enhancer):
    report = elite.parameter_report(real_enhancer)
    groups = report["groups"]
    assert groups["skip_convs"] == sum(i * o for i, o in elite.skip_channels((128, 256, 512, 512)))
    assert groups["unet_conv_in"] == 4 * 320 * 9 + 320
    unet_lora = sum(p.numel() for n, p in real_enhancer.named_parameters() if n.startswith("unet.") and "lora_" in n)
    assert groups["unet_lora"] == unet_lora and round(unet_lora / 1e6, 2) == 8.11  # pix2pix-turbo's 8.11 M
    assert round(groups["vae_decoder_lora"] / 1e6, 2) == 0.51
    assert abs(report["frozen_params"] - (865.9e6 + 83.65e6)) < 0.1e6  # UNet + VAE, as published


def test_counted_work_per_step_matches_the_published_count():
    """REFERENCE §7: a checkpointed batch-1 step at 512² is 11.4 TFLOP without the loss network, and one VGG16
    forward adds 0.16 (the loss runs it on the output and the target, and back through the output: about 4x)."""
    tflop = elite.count_training_tflop(elite.Config(run_mode="footprint", batch_size=1))
    assert tflop == pytest.approx(11.4 + 4 * 0.16, rel=0.03)
