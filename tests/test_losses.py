"""LPIPS from the shared VGG pass equals the lpips package; the Gram loss is DIFIX's, per sample; the loss balance."""
import math

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


DIFIX_LAYER_WEIGHTS = (1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5)  # relu1_2 ... relu5_3, typed from its loss.py


def difix_gram(predicted: list[torch.Tensor], reference: list[torch.Tensor], sample: int) -> float:
    """DIFIX's Gram loss of one sample, in float64: per layer w · mean((F Fᵀ − R Rᵀ)²) / (C·H·W), G unnormalised."""
    total = 0.0
    for weight, p, r in zip(DIFIX_LAYER_WEIGHTS, predicted, reference):
        f, g = p[sample].double(), r[sample].double()  # (C, H, W)
        channels, height, width = f.shape
        gram_f, gram_g = torch.einsum("chw,dhw->cd", f, f), torch.einsum("chw,dhw->cd", g, g)
        total += weight * ((gram_f - gram_g) ** 2).mean().item() / (channels * height * width)
    return total


def test_gram_term_equals_difix_formula_per_sample(perceptual):
    enhanced, target = images(3), images(4)  # two different samples
    _, gram_value = perceptual(enhanced, target)
    with torch.no_grad():
        predicted, reference = perceptual.features(enhanced), perceptual.features(target)
    expected = torch.tensor([difix_gram(predicted, reference, i) for i in range(2)], dtype=torch.float64)
    assert expected[0].item() != pytest.approx(expected[1].item(), rel=1e-2)  # mixing the samples would show
    assert torch.allclose(gram_value.double(), expected, rtol=1e-4)


def test_gram_term_does_not_mix_samples(perceptual):
    enhanced, target = images(5, count=1), images(6, count=1)
    other_enhanced, other_target = images(7, count=1), images(8, count=1)
    _, twice = perceptual(torch.cat([enhanced, enhanced]), torch.cat([target, target]))
    assert twice[0] == twice[1]
    _, forward = perceptual(torch.cat([enhanced, other_enhanced]), torch.cat([target, other_target]))
    _, swapped = perceptual(torch.cat([other_enhanced, enhanced]), torch.cat([other_target, target]))
    assert torch.allclose(forward, swapped.flip(0), rtol=1e-6) and torch.allclose(forward[0], twice[0], rtol=1e-6)


def test_gram_stays_in_fp32_and_finite_where_fp16_would_overflow():
    features = torch.full((1, 8, 128, 128), 3.0)  # G = 9 · 128² = 147,456 > fp16's 65,504
    with torch.autocast("cpu", dtype=torch.float16):
        gram = elite.gram_matrix(features)
        term = elite.gram_term(features * 1.5, features)
    assert gram.dtype == term.dtype == torch.float32 and torch.isfinite(term).all()
    assert gram[0, 0, 0].item() == 9 * 128**2
    expected = ((2.25 - 1) * 9 * 128**2) ** 2 / (8 * 128 * 128)  # every entry of G differs by the same amount
    assert term.item() == pytest.approx(expected, rel=1e-5)


def test_gram_matrix_is_unnormalised():
    features = torch.randn(2, 3, 4, 5)
    flat = features.reshape(2, 3, 20)
    assert torch.allclose(elite.gram_matrix(features), torch.stack([f @ f.T for f in flat]), atol=1e-5)


def test_loss_terms_and_gram_start():
    torch.manual_seed(0)
    loss_fn = elite.EnhancerLoss(smoke_config(gram_start_step=5, gram_weight=2.0), pretrained_backbone=False)
    a, b = images(5), images(6)
    before, after = loss_fn(a, b, step=4), loss_fn(a, b, step=5)
    assert torch.isclose(before["total"], before["l1"] + before["lpips"])
    assert torch.isclose(after["total"], after["l1"] + after["lpips"] + 2.0 * after["gram"])
    assert torch.isclose(before["l1"], (a - b).abs().mean())


def test_loss_balance_shares_and_gradient_norms(tiny_enhancer):
    config = smoke_config(l1_weight=1.0, lpips_weight=0.0, gram_weight=2.0, gram_start_step=1000)
    torch.manual_seed(0)
    loss_fn = elite.EnhancerLoss(config, pretrained_backbone=False)
    degraded, clean = images(9), images(10)
    balance = elite.loss_balance(tiny_enhancer, loss_fn, degraded, clean, torch.float32)
    assert list(balance) == ["l1", "lpips", "gram"]
    assert sum(term["share"] for term in balance.values()) == pytest.approx(1.0)
    assert balance["lpips"]["grad_norm"] == 0.0 and balance["lpips"]["share"] == 0.0
    for name in ("l1", "gram"):  # Gram at its weight although training would switch it on only at step 1000
        assert balance[name]["grad_norm"] > 0 and math.isfinite(balance[name]["grad_norm"])
        assert balance[name]["weighted"] == pytest.approx(balance[name]["weight"] * balance[name]["value"])
    assert all(param.grad is None for param in tiny_enhancer.parameters())  # nothing trained


def test_loss_balance_gradient_norm_equals_one_backward(tiny_enhancer):
    torch.manual_seed(0)
    loss_fn = elite.EnhancerLoss(smoke_config(), pretrained_backbone=False)
    degraded, clean = images(11), images(12)
    balance = elite.loss_balance(tiny_enhancer, loss_fn, degraded, clean, torch.float32)
    (2 * loss_fn.terms(tiny_enhancer(degraded), clean)["gram"]).backward()  # gram_weight 2 below
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in tiny_enhancer.parameters()
                                                 if p.grad is not None]))
    assert balance["gram"]["grad_norm"] == pytest.approx(norm.item() * balance["gram"]["weight"] / 2, rel=1e-5)
