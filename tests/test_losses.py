"""LPIPS from the shared VGG pass equals the lpips package; the Gram loss is per sample."""
import pytest
import torch

from notebook_library import elite, smoke_config


@pytest.fixture(scope="module")
def perceptual():
    torch.manual_seed(0)
    return elite.PerceptualLoss(pretrained_backbone=False)


def images(seed: int, count: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shared_pass_lpips_equals_the_lpips_package(perceptual):
    a, b = images(0), images(1)
    lpips_value, _ = perceptual(a, b)
    assert torch.allclose(lpips_value, perceptual.lpips(a, b).flatten(), atol=1e-6)


def test_identical_images_give_zero(perceptual):
    a = images(2)
    lpips_value, gram_value = perceptual(a, a)
    assert torch.all(lpips_value.abs() < 1e-7) and torch.all(gram_value.abs() < 1e-12)


def test_gram_loss_is_per_sample(perceptual):
    a, b = images(3), images(4)
    _, batched = perceptual(a, b)
    singles = torch.cat([perceptual(a[i:i + 1], b[i:i + 1])[1] for i in range(2)])
    assert torch.allclose(batched, singles, rtol=1e-5)


def test_gram_matrix_formula():
    features = torch.randn(2, 3, 4, 5)
    flat = features.reshape(2, 3, 20)
    expected = torch.stack([f @ f.T for f in flat]) / (3 * 4 * 5)
    assert torch.allclose(elite.gram_matrix(features), expected, atol=1e-6)


def test_loss_terms_and_gram_start():
    torch.manual_seed(0)
    loss_fn = elite.EnhancerLoss(smoke_config(gram_start_step=5, gram_weight=2.0), pretrained_backbone=False)
    a, b = images(5), images(6)
    before, after = loss_fn(a, b, step=4), loss_fn(a, b, step=5)
    assert torch.isclose(before["total"], before["l1"] + before["lpips"])
    assert torch.isclose(after["total"], after["l1"] + after["lpips"] + 2.0 * after["gram"])
    assert torch.isclose(before["l1"], (a - b).abs().mean())
