"""The enhancer is the architecture the mission describes: skips, trainable set, frozen encoder, one-step x0."""
import json

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from notebook_library import FIXTURES, elite, smoke_config

CONFIGS = FIXTURES / "sd_turbo_configs"


def real_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}_config.json").read_text())


def test_skip_channels_derived_from_the_real_vae_config():
    channels = elite.skip_channels(real_config("vae")["block_out_channels"])
    assert channels == [(512, 512), (256, 512), (128, 512), (128, 256)]


@pytest.mark.parametrize("embedded, name", [("SD_TURBO_UNET", "unet"), ("SD_TURBO_VAE", "vae"),
                                            ("SD_TURBO_SCHEDULER", "scheduler")])
def test_embedded_configs_match_the_real_ones(embedded, name):
    real = real_config(name)
    for key, value in getattr(elite, embedded).items():
        assert real[key] == (list(value) if isinstance(value, tuple) else value), key


def test_one_step_x0_equals_the_scheduler_step_and_closed_form():
    scheduler = DDPMScheduler.from_config(real_config("scheduler"))
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [999]
    generator = torch.Generator().manual_seed(0)
    latent, noise_pred = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    alpha_bar = scheduler.alphas_cumprod[999]
    x0 = elite.one_step_x0(latent, noise_pred, alpha_bar)
    step = scheduler.step(noise_pred, 999, latent)
    assert torch.allclose(x0, step.pred_original_sample, atol=1e-6)
    assert torch.allclose(x0, step.prev_sample, atol=1e-5)
    assert abs(alpha_bar.item() - 0.004660) < 1e-6
    assert torch.allclose(x0, (latent - (1 - alpha_bar).sqrt() * noise_pred) / alpha_bar.sqrt())


def test_trainable_set_is_exactly_lora_conv_in_and_skips(tiny_enhancer):
    trainable = {name for name, p in tiny_enhancer.named_parameters() if p.requires_grad}
    groups = {name: elite.parameter_group(name) for name in trainable}
    assert None not in groups.values()
    assert {n for n, g in groups.items() if g == "unet_conv_in"} == {"unet.conv_in.weight", "unet.conv_in.bias"}
    assert {n for n, g in groups.items() if g == "skip_convs"} == {f"skip_convs.{i}.weight" for i in range(4)}
    assert all(n.startswith("vae.decoder.") for n, g in groups.items() if g == "vae_decoder_lora")
    assert all(p.dtype == torch.float32 for p in tiny_enhancer.parameters() if p.requires_grad)
    frozen = {name for name, _ in tiny_enhancer.named_parameters()} - trainable
    assert not any("lora_" in name for name in frozen)


def test_encoder_is_frozen_and_has_no_lora(tiny_enhancer):
    encoder_names = [n for n, _ in tiny_enhancer.named_parameters() if n.startswith(("vae.encoder.", "vae.quant_conv."))]
    assert encoder_names and not any("lora" in n for n in encoder_names)
    assert not any(p.requires_grad for n, p in tiny_enhancer.named_parameters() if n in encoder_names)


def expected_lora_modules(model: torch.nn.Module, targets, prefix: str, under: str = "") -> set[str]:
    """Names of the Linear/Conv2d modules of an adapter-free model that a suffix target list selects."""
    return {f"{prefix}{name}" for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.startswith(under)
            and any(name == t or name.endswith(f".{t}") for t in targets)}


def test_lora_wraps_exactly_the_targets_and_only_the_decoder(tiny_enhancer):
    wrapped = {name.rsplit(".lora_A", 1)[0] for name, _ in tiny_enhancer.named_parameters() if ".lora_A." in name}
    unet_expected = expected_lora_modules(UNet2DConditionModel(**elite.TINY_UNET), elite.UNET_LORA_TARGETS, "unet.")
    vae_expected = expected_lora_modules(AutoencoderKL(**elite.TINY_VAE), elite.VAE_LORA_TARGETS, "vae.", "decoder.")
    assert {n for n in wrapped if n.startswith("unet.")} == unet_expected
    assert {n for n in wrapped if n.startswith("vae.")} == vae_expected


def test_encode_matches_the_vae_posterior_mode(tiny_parts):
    _, vae, _, _ = tiny_parts
    enhancer = elite.OneStepEnhancer(tiny_parts[0], vae, tiny_parts[3], tiny_parts[2].alphas_cumprod, 999)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    latent, taps = enhancer.encode(images)
    expected = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
    assert torch.allclose(latent, expected, atol=1e-6)
    assert [t.shape[1:] for t in taps] == [(32, 64, 64), (32, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_untrained_enhancer_is_plain_sd_turbo_within_the_skip_contribution(tiny_parts):
    unet, vae, scheduler, prompt = tiny_parts
    enhancer = elite.OneStepEnhancer(unet, vae, prompt, scheduler.alphas_cumprod, 999)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latent, _ = enhancer.encode(images)
        x0 = enhancer.predict_clean_latent(latent)
        plain = vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
        with_skips = enhancer(images)
        for conv in enhancer.skip_convs:
            conv.weight.zero_()
        without_skips = enhancer(images)
    assert torch.allclose(without_skips, plain, atol=1e-5)
    assert 0 < (with_skips - plain).abs().max() < 0.05


def randomize_lora_b(enhancer, std: float = 1e-3) -> None:
    """LoRA's B starts at 0, which hides A's gradient and makes merging a no-op: give it values."""
    for name, param in enhancer.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=std)


def test_gradients_reach_every_trainable_tensor_and_nothing_else(any_enhancer):
    randomize_lora_b(any_enhancer)
    any_enhancer.zero_grad(set_to_none=True)
    any_enhancer(torch.rand(1, 3, 64, 64) * 2 - 1).square().mean().backward()
    for name, param in any_enhancer.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_merged_lora_gives_the_same_output_and_puts_the_weights_back_exactly(any_enhancer):
    randomize_lora_b(any_enhancer, std=0.02)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    before = {name: tensor.clone() for name, tensor in any_enhancer.state_dict().items()}
    with torch.no_grad(), elite.evaluating(any_enhancer):
        unmerged = any_enhancer(images)
        with elite.merged_lora(any_enhancer):
            merged = any_enhancer(images)
            changed = [name for name, tensor in any_enhancer.state_dict().items()
                       if not torch.equal(tensor, before[name])]
    assert changed and all(name.endswith("base_layer.weight") for name in changed)  # merging did fold LoRA in
    assert torch.allclose(merged, unmerged, atol=1e-4)
    after = any_enhancer.state_dict()
    assert all(torch.equal(after[name], before[name]) for name in before)  # bit for bit
    assert not any(module.merged for module in any_enhancer.modules() if isinstance(module, elite.BaseTunerLayer))


def test_evaluating_restores_the_mode_even_when_the_block_fails(tiny_enhancer):
    tiny_enhancer.train()
    with pytest.raises(KeyboardInterrupt), elite.evaluating(tiny_enhancer):
        assert not tiny_enhancer.training
        raise KeyboardInterrupt
    assert tiny_enhancer.training


def test_parameter_report_adds_up(tiny_enhancer):
    report = elite.parameter_report(tiny_enhancer)
    total = sum(p.numel() for p in tiny_enhancer.parameters())
    assert report["trainable_params"] == sum(report["groups"].values())
    assert report["trainable_params"] + report["frozen_params"] == total
    assert report["groups"]["skip_convs"] == sum(i * o for i, o in elite.skip_channels((32, 32, 64, 64)))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_parts):
    unet, vae, scheduler, prompt = tiny_parts
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    grads = []
    for checkpointing in (False, True):
        enhancer = elite.OneStepEnhancer(unet, vae, prompt, scheduler.alphas_cumprod, 999, checkpointing)
        enhancer(images).square().mean().backward()
        grads.append([conv.weight.grad.clone() for conv in enhancer.skip_convs])
        unet.disable_gradient_checkpointing()
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(*grads))


def test_fp32_decode_context_restores_the_frozen_dtype(tiny_enhancer):
    tiny_enhancer.vae.half()
    elite.mark_trainable(tiny_enhancer)  # LoRA back to fp32, frozen weights fp16
    with elite.frozen_vae_in_fp32(tiny_enhancer):
        assert all(p.dtype == torch.float32 for p in tiny_enhancer.vae.parameters())
    frozen = [p for p in tiny_enhancer.vae.parameters() if not p.requires_grad]
    assert all(p.dtype == torch.float16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in tiny_enhancer.vae.parameters() if p.requires_grad)


def test_a_merge_that_fails_halfway_is_undone(tiny_enhancer, monkeypatch):
    randomize_lora_b(tiny_enhancer, std=0.02)
    before = {name: tensor.clone() for name, tensor in tiny_enhancer.state_dict().items()}
    layers = [module for module in tiny_enhancer.modules() if isinstance(module, elite.BaseTunerLayer)]
    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(layers[5], "merge", out_of_memory)  # the sixth layer of many
    with pytest.raises(torch.OutOfMemoryError), elite.merged_lora(tiny_enhancer):
        pass
    assert all(torch.equal(tensor, before[name]) for name, tensor in tiny_enhancer.state_dict().items())
    assert not any(layer.merged for layer in layers)
