"""LPIPS from the shared VGG pass equals the lpips package; Gram is DIFIX's, per sample, area-scaled; the balance:
its values, its loss-scale loop, and a memory peak no higher than a training step's."""
import weakref

import lpips
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from notebook_library import HalfActivations, elite, random_images, smoke_config

DIFIX_WEIGHTS = (1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5)  # relu1_2 ... relu5_3, typed from DIFIX's loss.py
pytestmark = pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum):UserWarning")  # lpips' torchvision call

@pytest.fixture(scope="module")
def loss_fn():
    return elite.EnhancerLoss(smoke_config(gram_start_step=5, gram_weight=2.0), pretrained_backbone=False)

def difix_gram(p: torch.Tensor, r: torch.Tensor) -> float:
    """DIFIX's Gram distance of one sample's (C, H, W) features in float64: mean((F Fᵀ − R Rᵀ)²) / (C·H·W)."""
    f, g = p.double().flatten(1), r.double().flatten(1)
    return ((f @ f.T - g @ g.T) ** 2).mean().item() / p.numel()

def test_shared_pass_lpips_equals_the_lpips_package_across_batches(loss_fn):
    torch.manual_seed(0)
    package = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # seeded as make_lpips seeds it
    assert all(torch.equal(t, package.state_dict()[n]) for n, t in loss_fn.lpips.state_dict().items())
    a, b, c = random_images(0, count=5), random_images(1, count=5), random_images(2, count=5)
    with torch.no_grad():
        expected_a, expected_c = package(a, b).flatten(), package(c, b).flatten()
        assert torch.allclose(loss_fn.terms(a, b)["lpips"], expected_a.mean(), atol=1e-6)
    scores = elite.score({"a": a, "c": c}, b, {"lpips": loss_fn.lpips}, torch.device("cpu"), batch_size=2)  # 2, 2, 1
    assert torch.allclose(torch.stack([scores["lpips_a"], scores["lpips_c"]]), torch.stack([expected_a, expected_c]),
                          atol=1e-6)

def test_identical_images_give_zero_for_every_term(loss_fn):
    assert all(value.item() == 0 for value in loss_fn.terms(random_images(3), random_images(3)).values())

def test_gram_term_is_difix_per_sample_and_does_not_mix_samples(loss_fn):
    a, b = random_images(4), random_images(5)
    with torch.no_grad():
        predicted, reference = loss_fn.lpips.features(a), loss_fn.lpips.features(b)
    for p, r in zip(predicted, reference):
        expected = torch.tensor([difix_gram(p[i], r[i]) for i in range(2)], dtype=torch.float64)
        assert expected[0].item() != pytest.approx(expected[1].item(), rel=1e-2)  # mixing them would show
        assert torch.allclose(elite.gram_term(p, r).double(), expected, rtol=1e-4)
        assert torch.allclose(elite.gram_term(p.flip(0), r.flip(0)), elite.gram_term(p, r).flip(0), rtol=1e-6)

def test_gram_stays_fp32_and_finite_under_fp16_autocast_where_an_fp16_gram_overflows():
    features = torch.full((1, 8, 128, 128), 3.0)  # G = 9 · 128² = 147,456 > fp16's 65,504
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.isinf(features.flatten(2) @ features.flatten(2).transpose(1, 2)).all()  # an autocast Gram's
        term = elite.gram_term(features * 1.5, features)
    expected = ((2.25 - 1) * 9 * 128**2) ** 2 / (8 * 128 * 128)  # every entry of G differs by the same amount
    assert term.dtype == torch.float32 and term.item() == pytest.approx(expected, rel=1e-5)

def test_gram_term_is_scaled_to_difix_crop_area(loss_fn):
    texture_a, texture_b = random_images(6, count=1, size=16), random_images(7, count=1, size=16)
    values = {}
    for size in (64, 128):
        a, b = (t.repeat(1, 1, size // 16, size // 16) for t in (texture_a, texture_b))
        with torch.no_grad():
            gram = loss_fn.terms(a, b)["gram"].item()
            p, r = loss_fn.lpips.features(a), loss_fn.lpips.features(b)
        expected = sum(w * difix_gram(pi[0], ri[0]) for w, pi, ri in zip(DIFIX_WEIGHTS, p, r)) * 400**2 / size**2
        assert gram == pytest.approx(expected, rel=1e-4)
        values[size] = gram
    assert values[128] == pytest.approx(values[64], rel=0.3)  # the same statistics, about the same value
    assert 3 < values[128] * 128**2 / (values[64] * 64**2) < 5  # without the GRAM_AREA / (H·W) scaling: ~4x

def test_gram_comes_in_at_gram_start_step(loss_fn):
    a, b = random_images(8), random_images(9)
    assert loss_fn.weights(4)["gram"] == 0 and loss_fn.weights(5)["gram"] == 2.0 == loss_fn.weights(None)["gram"]
    before, after = loss_fn(a, b, step=4), loss_fn(a, b, step=5)
    assert torch.isclose(before["total"], before["l1"] + before["lpips"])
    assert torch.isclose(after["total"], after["l1"] + after["lpips"] + 2.0 * after["gram"])
    assert torch.isclose(after["l1"], (a - b).abs().mean())

def test_loss_balance_shares_and_gradient_norms_equal_one_plain_backward(tiny_enhancer):
    loss_fn = elite.EnhancerLoss(smoke_config(lpips_weight=0.0, gram_weight=2.0, gram_start_step=1000), False)
    degraded, clean = random_images(10, count=1), random_images(11, count=1)
    balance = elite.loss_balance(tiny_enhancer, loss_fn, degraded, clean, torch.float32)
    assert all(param.grad is None for param in tiny_enhancer.parameters())  # nothing accumulated
    assert list(balance) == ["l1", "lpips", "gram"] and balance["gram"]["weight"] == 2.0  # Gram at its weight
    assert sum(t["share"] for t in balance.values()) == pytest.approx(1) and balance["lpips"]["share"] == 0.0
    parameters = [p for p in tiny_enhancer.parameters() if p.requires_grad]
    terms = loss_fn.terms(tiny_enhancer(degraded), clean)
    for name in ("l1", "lpips", "gram"):
        grads = torch.autograd.grad(balance[name]["weight"] * terms[name], parameters, retain_graph=True)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
        assert (norm > 0) == (balance[name]["weight"] > 0) and balance[name]["grad_norm"] == pytest.approx(norm, 1e-4)
        assert balance[name]["value"] == pytest.approx(terms[name].item(), rel=1e-6)

class LiveBytes(TorchDispatchMode):
    """The most bytes of tensor storage alive at once, of the storages made inside the block (autograd's too; views
    and in-place results share an input's storage and are not new)."""

    def __init__(self):
        super().__init__()
        self.sizes, self.live, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        storages = lambda tree: {t.untyped_storage() for t in tree_flatten(tree)[0]  # noqa: E731
                                 if isinstance(t, torch.Tensor)}
        inputs = {storage.data_ptr() for storage in storages((args, kwargs))}
        for storage in storages(out):
            if (key := storage.data_ptr()) and key not in self.sizes and key not in inputs:
                self.sizes[key] = storage.nbytes()
                self.live += self.sizes[key]
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self.free, key)
        return out

    def free(self, key):
        self.live -= self.sizes.pop(key)

def test_the_loss_balance_peaks_no_higher_than_a_training_step(tiny_model_dir):
    config = smoke_config(gram_start_step=0)  # every term in the training step too
    enhancer = elite.build_enhancer(config, torch.device("cpu"), torch.float32, str(tiny_model_dir))
    loss_fn, batch = elite.EnhancerLoss(config, pretrained_backbone=False), (random_images(12), random_images(13))
    with LiveBytes() as balance:
        elite.loss_balance(enhancer, loss_fn, *batch, torch.float32)
    optimizer = elite.make_optimizer(enhancer, config, torch.device("cpu"))
    no_scaler = torch.amp.GradScaler("cpu", enabled=False)
    with LiveBytes() as step:  # the first step: Adam's moments are made in it, as they stay alive in every later one
        elite.train_step(enhancer, loss_fn, optimizer, no_scaler, *batch, 0, config, torch.float32)
    assert 0 < balance.peak <= step.peak, (balance.peak, step.peak)

def test_the_balance_lowers_the_loss_scale_until_the_fp16_gradients_are_finite():
    class OneTerm:  # a term whose fp16 gradient is 100 x the loss scale: infinite at 2^16, finite at 2^8
        weights = staticmethod(lambda step: {"l1": 1.0})
        terms = staticmethod(lambda enhanced, clean: {"l1": 100 * enhanced.float().sum()})
    one_pixel = torch.ones(1, 3, 1, 1)
    balance = elite.loss_balance(HalfActivations(), OneTerm(), one_pixel, one_pixel, torch.float16)
    assert balance["l1"]["grad_norm"] == pytest.approx(100 * 12 ** 0.5, rel=1e-3)  # 9 weights, 3 biases: 100 each
