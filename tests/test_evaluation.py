"""Metric helpers and comparison images."""
import math

import torch

from conftest import elite


def test_psnr_formula():
    clean = torch.zeros(1, 3, 8, 8)
    noisy = clean + 0.2  # 0.1 on the [0, 1] scale -> MSE 0.01 -> 20 dB
    assert torch.allclose(elite.psnr_per_image(noisy, clean), torch.tensor([20.0]), atol=1e-4)


def test_summary_and_confidence_interval():
    summary = elite.summarize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(5 / 3)
    assert summary["n"] == 4 and summary["mean"] == 2.5 and math.isclose(summary["std"], std)
    assert all(math.isclose(a, b) for a, b in zip(summary["ci95"], [2.5 - 1.96 * std / 2, 2.5 + 1.96 * std / 2]))


def test_lpips_metric_range_and_identity():
    torch.manual_seed(0)
    metric = elite.make_lpips("alex", pretrained=False)
    a = torch.rand(3, 3, 64, 64) * 2 - 1
    assert torch.all(elite.lpips_per_image(metric, a, a) == 0)
    assert torch.all(elite.lpips_per_image(metric, a, -a) > 0)


def test_per_family_breakdown_uses_only_images_with_that_family():
    per_image = {"m_degraded": torch.tensor([1.0, 2.0, 3.0]), "m_enhanced": torch.tensor([0.5, 1.0, 1.5])}
    records = [{"blur": {}}, {"blur": {}, "noise": {}}, {"noise": {}}]
    result = elite.per_family(per_image, records, ["m"])
    assert set(result) == {"blur", "noise"}
    assert result["blur"]["m"]["degraded"]["mean"] == 1.5 and result["noise"]["m"]["enhanced"]["mean"] == 1.25


def test_comparison_row_layout(tmp_path):
    images = [torch.full((3, 32, 32), v) for v in (-1.0, 0.0, 1.0)]
    row = elite.labelled_row(images, ["degraded", "enhanced", "ground truth"])
    strip = max(14, 32 // 16)
    assert row.size == (96, 32 + strip)
    assert row.getpixel((80, strip + 5)) == (255, 255, 255) and row.getpixel((10, strip + 5)) == (0, 0, 0)
