"""The enhancer is the architecture the notebook describes: skips, one-step x0, trainable set, frozen encoder."""
import json

import pytest
import torch
from diffusers import DDPMScheduler
from peft.tuners.tuners_utils import BaseTunerLayer

from notebook_library import FIXTURES, elite, random_images, smoke_config

CPU = torch.device("cpu")
REAL_CONFIGS = FIXTURES / "sd_turbo_configs"

def randomize_lora_b(enhancer, std: float) -> None:
    """LoRA's B starts at 0, which hides A's gradient and makes merging a no-op: give it values."""
    torch.manual_seed(1)
    for param in (p for name, p in enhancer.named_parameters() if "lora_B" in name):
        torch.nn.init.normal_(param, std=std)

def trainable(enhancer) -> dict[str, torch.nn.Parameter]:
    return {name: param for name, param in enhancer.named_parameters() if param.requires_grad}

def test_skip_channels_follow_the_real_vae_config():
    channels = json.loads((REAL_CONFIGS / "vae_config.json").read_text())["block_out_channels"]
    assert elite.skip_channels(channels) == [(512, 512), (256, 512), (128, 512), (128, 256)]

@pytest.mark.parametrize("embedded, name", [("SD_TURBO_UNET", "unet"), ("SD_TURBO_VAE", "vae"),
                                            ("SD_TURBO_SCHEDULER", "scheduler")])
def test_embedded_configs_equal_the_real_files(embedded, name):
    real = json.loads((REAL_CONFIGS / f"{name}_config.json").read_text())
    for key, value in getattr(elite, embedded).items():
        assert real[key] == (list(value) if isinstance(value, tuple) else value), key

@pytest.mark.parametrize("t, alpha_bar", [(999, 0.004660), (199, 0.755)])
def test_one_step_x0_equals_the_closed_form_and_the_ddpm_step(t, alpha_bar):
    scheduler = DDPMScheduler.from_config(elite.SD_TURBO_SCHEDULER)
    a = scheduler.alphas_cumprod[t]
    assert a.item() == pytest.approx(alpha_bar, abs=1e-3)
    generator = torch.Generator().manual_seed(t)
    latent, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    x0 = elite.one_step_x0(latent, eps, a)
    closed = (latent.double() - (1 - a.double()).sqrt() * eps.double()) / a.double().sqrt()
    assert x0.dtype == torch.float32 and torch.allclose(x0.double(), closed, rtol=1e-5, atol=1e-5)
    assert torch.allclose(x0, scheduler.step(eps, t, latent).pred_original_sample, rtol=1e-5, atol=1e-5)
    half = elite.one_step_x0(latent.half(), eps.half(), a)  # fp16 UNet output: x0 still computed in fp32
    exact = (latent.half().double() - (1 - a.double()).sqrt() * eps.half().double()) / a.double().sqrt()
    assert half.dtype == torch.float32 and torch.allclose(half.double(), exact, rtol=1e-5, atol=1e-5)

def test_trainable_set_is_exactly_lora_conv_in_and_skips_in_fp32(tiny_model_dir):
    enhancer = elite.build_enhancer(smoke_config(), CPU, torch.float16, str(tiny_model_dir))  # as on a T4
    names = trainable(enhancer)
    assert all(module.training for module in enhancer.modules())  # diffusers computes differently in eval mode
    groups = {group: {n for n in names if elite.parameter_group(n) == group} for group in elite.PARAMETER_GROUPS}
    assert set().union(*groups.values()) == set(names)
    assert groups["unet_conv_in"] == {"unet.conv_in.weight", "unet.conv_in.bias"}
    assert groups["skip_convs"] == {f"skip_convs.{i}.weight" for i in range(4)}
    lora = {n for n, _ in enhancer.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    assert groups["unet_lora"] == {n for n in lora if n.startswith("unet.")} != set()
    assert groups["vae_decoder_lora"] == {n for n in lora if n.startswith("vae.decoder.")} == lora - groups["unet_lora"]
    assert all(p.dtype == torch.float32 for p in names.values())
    assert {p.dtype for n, p in enhancer.named_parameters() if n not in names} == {torch.float16}
    encoder = list(enhancer.vae.encoder.named_parameters()) + list(enhancer.vae.quant_conv.named_parameters())
    assert encoder and not any(p.requires_grad or "lora" in n for n, p in encoder)
    assert not any(isinstance(m, BaseTunerLayer) for m in enhancer.vae.encoder.modules())

def plain_sd_turbo(enhancer, x: torch.Tensor) -> torch.Tensor:
    """SD-Turbo's one step written out: encode (posterior mode), UNet at t = 999, x0 by hand, the plain decoder."""
    vae, unet = enhancer.vae, enhancer.unet
    a = DDPMScheduler.from_config(elite.SD_TURBO_SCHEDULER).alphas_cumprod[999]
    z = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    eps = unet(z, torch.full((len(x),), 999), encoder_hidden_states=enhancer.prompt_embedding).sample
    return vae.decode(((z - (1 - a).sqrt() * eps) / a.sqrt()) / vae.config.scaling_factor).sample.clamp(-1, 1)

def test_without_unet_only_the_decoder_lora_and_skips_train(tiny_model_dir):
    enhancer = elite.build_enhancer(smoke_config(use_unet=False), CPU, torch.float32, str(tiny_model_dir))
    assert enhancer.unet is None
    assert {elite.parameter_group(n) for n in trainable(enhancer)} == {"vae_decoder_lora", "skip_convs"}
    with torch.no_grad():
        latent, taps = elite.encode_with_taps(enhancer.vae, random_images(0, count=1))
        assert torch.equal(enhancer(random_images(0, count=1)), enhancer.decode(latent, taps))

def test_without_skips_there_are_no_skip_convs_and_the_output_is_plain_sd_turbo(tiny_model_dir):
    enhancer = elite.build_enhancer(smoke_config(skip_connections=False), CPU, torch.float32, str(tiny_model_dir))
    assert enhancer.skip_convs is None and not any(n.startswith("skip") for n, _ in enhancer.named_parameters())
    assert elite.parameter_report(enhancer)["groups"]["skip_convs"] == 0
    with torch.no_grad():
        x = random_images(1, count=1)
        assert torch.allclose(enhancer(x), plain_sd_turbo(enhancer, x), atol=1e-5)

def test_untrained_enhancer_is_plain_sd_turbo_within_the_skip_contribution(tiny_enhancer):
    x, vae = random_images(3, count=1, size=64), tiny_enhancer.vae
    latent, taps = elite.encode_with_taps(vae, x)
    with torch.no_grad():
        assert torch.allclose(latent, vae.encode(x).latent_dist.mode() * vae.config.scaling_factor, atol=1e-6)
        plain, with_skips = plain_sd_turbo(tiny_enhancer, x), tiny_enhancer(x)
        for conv in tiny_enhancer.skip_convs:
            conv.weight.zero_()
        without_skips = tiny_enhancer(x)
    assert [t.shape[1:] for t in taps] == [(32, 64, 64), (32, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert torch.allclose(without_skips, plain, atol=1e-5)
    assert 0 < (with_skips - plain).abs().max() < 0.05

def test_train_seed_decides_the_lora_initialisation_and_seed_does_not(tiny_model_dir):
    build = lambda **changes: elite.trainable_tensors(elite.build_enhancer(  # noqa: E731
        smoke_config(**changes), CPU, torch.float32, str(tiny_model_dir)))
    first, other_data, other_training = build(), build(seed=5), build(train_seed=1)
    lora_a = [name for name in first if ".lora_A." in name]  # B starts at 0 whatever the seed
    assert lora_a and all(torch.equal(first[name], other_data[name]) for name in first)
    assert not any(torch.equal(first[name], other_training[name]) for name in lora_a)

def test_gradients_reach_every_trainable_tensor_only_and_checkpointing_keeps_them(tiny_enhancer, monkeypatch):
    randomize_lora_b(tiny_enhancer, std=1e-3)
    checkpointed, grads, real_checkpoint = [], [], elite.checkpoint
    monkeypatch.setattr(elite, "checkpoint", lambda *a, **k: checkpointed.append(1) or real_checkpoint(*a, **k))
    for on in (True, False):  # the smoke preset checkpoints, as a full run does
        tiny_enhancer.checkpointing = on
        if not on:
            tiny_enhancer.unet.disable_gradient_checkpointing()
        assert tiny_enhancer.unet.is_gradient_checkpointing is on
        tiny_enhancer.zero_grad(set_to_none=True)
        tiny_enhancer(random_images(6, count=1)).square().mean().backward()
        grads.append({name: p.grad for name, p in tiny_enhancer.named_parameters() if p.grad is not None})
    assert len(checkpointed) == 5  # the decoder's mid block and four up blocks, in the checkpointed pass only
    assert set(grads[0]) == set(grads[1]) == set(trainable(tiny_enhancer))  # nothing frozen gets a gradient
    for name, grad in grads[0].items():
        assert grad.abs().sum() > 0 and torch.allclose(grad, grads[1][name], rtol=1e-5, atol=1e-8), name

def test_parameter_report_adds_up(tiny_enhancer):
    report, params = elite.parameter_report(tiny_enhancer), dict(tiny_enhancer.named_parameters())
    assert report["trainable_params"] == sum(report["groups"].values())
    assert report["trainable_params"] + report["frozen_params"] == sum(p.numel() for p in params.values())
    assert report["groups"]["skip_convs"] == sum(i * o for i, o in elite.skip_channels((32, 32, 64, 64)))
    for group, prefix in (("unet_lora", "unet."), ("vae_decoder_lora", "vae."), ("unet_conv_in", "unet.conv_in.")):
        assert report["groups"][group] == sum(p.numel() for n, p in params.items() if n.startswith(prefix)
                                              and ("lora_" in n) == (group != "unet_conv_in"))

@pytest.mark.slow
def test_real_architecture_lora_sits_on_the_pix2pix_turbo_targets(real_enhancer):
    modules = dict(real_enhancer.named_modules())
    wrapped = {name for name, m in modules.items() if isinstance(m, BaseTunerLayer)}
    layers = wrapped | {name for name, m in modules.items() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
                        and "lora_" not in name and "base_layer" not in name}  # every layer LoRA could wrap
    targets = ((elite.UNET_LORA_TARGETS, "unet."), (elite.VAE_LORA_TARGETS, "vae.decoder."))  # suffix match
    unet, decoder = ({n for n in layers if n.startswith(under) and any(n == t or n.endswith(f".{t}") for t in names)}
                     for names, under in targets)
    assert wrapped == unet | decoder and len(unet) == 257 and len(decoder) == 39
    assert not any(p.requires_grad for p in real_enhancer.vae.encoder.parameters())
    assert elite.parameter_report(real_enhancer)["groups"] == {
        "unet_lora": 8_108_576, "unet_conv_in": 11_840, "vae_decoder_lora": 512_668, "skip_convs": 491_520}
