"""What the evaluation compares the trained model with: the zero-shot model, the VAE ceiling, the model without its
skips, and the single-family probe."""
import pytest
import torch

from notebook_library import elite, smoke_config

CPU, FP32 = torch.device("cpu"), torch.float32


@pytest.fixture(scope="module")
def run_data(tmp_path_factory):
    """A smoke run's data: its directory, config and (degraded, clean) pairs."""
    config = smoke_config(num_images=8, test_fraction=0.5)
    run_dir = tmp_path_factory.mktemp("run")
    subset = elite.prepare_data(config, run_dir)
    return run_dir, config, elite.ImagePairs(subset, config)


@pytest.fixture(scope="module")
def scorers():
    torch.manual_seed(0)
    return {"lpips_alex": elite.make_lpips("alex", pretrained=False)}


def train_at_random(enhancer) -> None:
    """A stand-in for training: every trainable tensor moves."""
    generator = torch.Generator().manual_seed(1)
    for param in enhancer.parameters():
        if param.requires_grad:
            param.data += 0.02 * torch.randn(param.shape, generator=generator)


def test_zero_shot_is_the_untrained_model_whatever_training_did(tiny_enhancer, run_data, scorers, tmp_path):
    run_dir, config, pairs = run_data
    degraded, clean, _ = pairs.test_set()
    untrained = elite.trainable_tensors(tiny_enhancer)
    as_built = elite.enhance(tiny_enhancer, degraded, 4, CPU, FP32)  # LoRA B = 0, skips at SKIP_INIT
    noise_as_built = elite.enhance(tiny_enhancer, pairs.probe_set("noise"), 4, CPU, FP32)
    train_at_random(tiny_enhancer)
    trained = elite.trainable_tensors(tiny_enhancer)
    baselines = elite.untrained_baselines(tiny_enhancer, untrained, pairs, scorers, config, tmp_path, tmp_path, CPU,
                                          FP32)
    assert torch.equal(baselines["zero_shot_images"], elite.to_uint8(as_built))
    assert torch.allclose(baselines["per_image"]["psnr_zero_shot"], elite.psnr_per_image(as_built, clean))
    assert all(torch.equal(trained[name], value) for name, value in elite.trainable_tensors(tiny_enhancer).items())
    enhanced = elite.enhance(tiny_enhancer, degraded, 4, CPU, FP32)
    assert not torch.allclose(enhanced, as_built, atol=1e-3)  # the trained weights are back, and they differ
    assert torch.allclose(baselines["probe"]["noise"]["psnr_zero_shot"], elite.psnr_per_image(noise_as_built, clean))


def test_stored_baselines_are_read_back_not_measured_again(tiny_enhancer, run_data, scorers, tmp_path, monkeypatch):
    run_dir, config, pairs = run_data
    untrained = elite.trainable_tensors(tiny_enhancer)
    first = elite.untrained_baselines(tiny_enhancer, untrained, pairs, scorers, config, tmp_path, tmp_path, CPU, FP32)
    monkeypatch.setattr(elite, "measure_baselines", lambda *args: pytest.fail("measured twice"))
    again = elite.untrained_baselines(tiny_enhancer, {}, pairs, scorers, config, tmp_path, tmp_path, CPU, FP32)
    assert torch.equal(first["zero_shot_images"], again["zero_shot_images"])
    assert first["per_image"].keys() == again["per_image"].keys() == {
        f"{metric}_{side}" for metric in ("lpips_alex", "psnr", "ssim") for side in ("zero_shot", "vae_ceiling")}
    assert set(first["probe"]) == set(pairs.probe_families()) == set(elite.DEGRADATION_FAMILIES)


def test_vae_ceiling_is_the_clean_image_through_the_vae_alone(tiny_enhancer, run_data, scorers, tmp_path):
    run_dir, config, pairs = run_data
    _, clean, _ = pairs.test_set()
    baselines = elite.untrained_baselines(tiny_enhancer, elite.trainable_tensors(tiny_enhancer), pairs, scorers,
                                          config, tmp_path, tmp_path, CPU, FP32)
    vae = tiny_enhancer.vae
    with torch.no_grad():  # diffusers' own encode and decode: no UNet, no skips
        reconstructed = vae.decode(vae.encode(clean).latent_dist.mode()).sample.clamp(-1, 1)
    expected = elite.psnr_per_image(reconstructed, clean)
    assert torch.allclose(baselines["per_image"]["psnr_vae_ceiling"], expected, atol=1e-3)


def test_no_skips_differs_from_enhanced_exactly_by_what_the_skips_add(tiny_enhancer, run_data):
    _, _, pairs = run_data
    degraded, _, _ = pairs.test_set()
    for conv in tiny_enhancer.skip_convs:
        torch.nn.init.zeros_(conv.weight)
    assert torch.equal(elite.enhance(tiny_enhancer, degraded, 4, CPU, FP32, skips=False),
                       elite.enhance(tiny_enhancer, degraded, 4, CPU, FP32))
    for conv in tiny_enhancer.skip_convs:
        torch.nn.init.constant_(conv.weight, 0.01)
    assert not torch.allclose(elite.enhance(tiny_enhancer, degraded, 4, CPU, FP32, skips=False),
                              elite.enhance(tiny_enhancer, degraded, 4, CPU, FP32), atol=1e-3)


def test_the_probe_applies_each_family_alone_as_stored(run_data):
    run_dir, config, pairs = run_data
    assert pairs.probe_families() == list(elite.DEGRADATION_FAMILIES)
    clean = elite.to_model_range(pairs.test_inputs)
    for family in pairs.probe_families():
        middle = sum(getattr(config, f"{family}_strength")) / 2
        records = [row["probe"][family] for row in pairs.test_rows]
        assert all(list(record) == [family] and record[family]["strength"] == round(middle, 4) for record in records)
        probed = pairs.probe_set(family)
        assert probed.shape == clean.shape
        for i, record in enumerate(records):
            assert torch.equal(probed[i], elite.degrade_batch(clean[i:i + 1], [record])[0])


def test_the_probe_is_the_same_on_every_start_of_the_run(run_data):
    run_dir, config, pairs = run_data
    again = elite.ImagePairs(elite.prepare_data(config, run_dir), config)  # read from the cache, as a resume does
    assert again.test_rows == pairs.test_rows
    for family in pairs.probe_families():
        assert torch.equal(again.probe_set(family), pairs.probe_set(family))
