"""Metric helpers and comparison images."""
import json
import math
import zipfile

import pytest
import torch
from PIL import Image

from notebook_library import elite, smoke_config


def test_psnr_formula():
    clean = torch.zeros(1, 3, 8, 8)
    noisy = clean + 0.2  # 0.1 on the [0, 1] scale -> MSE 0.01 -> 20 dB
    assert torch.allclose(elite.psnr_per_image(noisy, clean), torch.tensor([20.0]), atol=1e-4)


T_975 = {3: 3.182446, 5: 2.570582}  # Student t quantiles (0.975) by degrees of freedom, from the tables


def test_summary_and_confidence_interval():
    summary = elite.summarize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(5 / 3)
    half_width = T_975[3] * std / 2  # t_{0.975, n-1} s / sqrt(n)
    assert summary["n"] == 4 and summary["mean"] == 2.5 and math.isclose(summary["std"], std)
    assert summary["ci95"] == pytest.approx([2.5 - half_width, 2.5 + half_width], rel=1e-6)
    assert elite.summarize(torch.tensor([0.3, 0.3]))["ci95"] == [pytest.approx(0.3)] * 2  # no spread, no width


def test_paired_gain_is_the_t_interval_of_the_differences_and_sees_what_unpaired_intervals_miss():
    degraded = torch.tensor([0.50, 0.30, 0.62, 0.41, 0.55, 0.35], dtype=torch.float64)  # LPIPS: images differ a lot
    improvement = torch.tensor([0.020, 0.030, 0.010, 0.025, 0.015, 0.020], dtype=torch.float64)
    enhanced = degraded - improvement  # a little better on every image
    low_degraded, high_enhanced = elite.summarize(degraded)["ci95"][0], elite.summarize(enhanced)["ci95"][1]
    assert high_enhanced > low_degraded  # the per-side intervals overlap...
    gain = elite.paired_gain(enhanced, degraded, higher_is_better=False)
    half_width = T_975[5] * improvement.std().item() / math.sqrt(6)
    mean = improvement.mean().item()
    assert gain["ci95"] == pytest.approx([mean - half_width, mean + half_width], rel=1e-6) and gain["ci95"][0] > 0
    assert gain["mean"] == pytest.approx(mean) and gain["n"] == 6 and gain["better"] == 6  # ...the paired one is > 0
    psnr_gain = elite.paired_gain(torch.tensor([30.0, 25.0, 28.0]), torch.tensor([29.0, 26.0, 27.0]), True)
    assert psnr_gain["mean"] == pytest.approx(1 / 3) and psnr_gain["better"] == 2  # higher is better for PSNR


def test_paired_report_names_each_baseline_that_was_measured():
    per_image = {"psnr_enhanced": torch.tensor([30.0, 31.0]), "psnr_degraded": torch.tensor([28.0, 30.0]),
                 "psnr_zero_shot": torch.tensor([20.0, 21.0])}
    report = elite.paired(per_image, "psnr")
    assert set(report) == {"enhanced_vs_degraded", "enhanced_vs_zero_shot"}  # no classical side measured
    assert report["enhanced_vs_zero_shot"]["mean"] == 10.0 and report["enhanced_vs_degraded"]["better"] == 2


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


def test_classical_baseline_sharpens_within_range():
    blurred = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 32, 32), 3, stride=1, padding=1) * 2 - 1
    sharpened = elite.classical_baseline(blurred)
    assert sharpened.shape == blurred.shape and sharpened.min() >= -1 and sharpened.max() <= 1
    assert (sharpened - blurred).abs().mean() > 0.01


def test_ssim_is_one_for_identical_images_and_lower_otherwise():
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(elite.ssim_per_image(a, a), torch.ones(2))
    assert torch.all(elite.ssim_per_image(a, a.flip(-1)) < 0.5)


def test_score_and_compare_cover_every_side():
    torch.manual_seed(0)
    clean = torch.rand(3, 3, 32, 32) * 2 - 1
    candidates = {side: clean + 0.1 * k for k, side in enumerate(elite.SIDES)}
    per_image = elite.score(candidates, clean, {"lpips_alex": elite.make_lpips("alex", pretrained=False)})
    assert set(per_image) == {f"{m}_{s}" for m in ("lpips_alex", "psnr", "ssim") for s in elite.SIDES}
    summary = elite.compare(per_image, "psnr")
    assert list(summary) == list(elite.SIDES) and summary["degraded"]["mean"] > summary["enhanced"]["mean"]


def test_working_size_keeps_aspect_and_multiples_of_8():
    assert elite.working_size(1024, 768, 512) == (680, 512)
    assert elite.working_size(512, 512, 512) == (512, 512)
    width, height = elite.working_size(4000, 500, 512)
    assert width * height <= 4 * 512**2 and width % 8 == 0 and height % 8 == 0


def test_own_image_errors_say_what_is_wrong(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        elite.load_input_image(text_file, 64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        elite.load_input_image(tmp_path / "missing.png", 64)
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 7000)).save(huge)
    with pytest.raises(ValueError, match="megapixels"):
        elite.load_input_image(huge, 64)


def test_own_image_any_mode_and_size(tmp_path):
    path = tmp_path / "render.webp"
    Image.new("RGBA", (300, 200), (200, 100, 50, 255)).save(path)
    image = elite.load_input_image(path, 64)
    assert image.shape == (1, 3, 64, 96) and image.min() >= -1 and image.max() <= 1


def test_adapter_export_and_reload_reproduce_outputs_exactly(tiny_enhancer, tiny_model_dir, tmp_path):
    config = smoke_config()
    for name, param in tiny_enhancer.named_parameters():  # stand-in for training: every trainable tensor moves
        if param.requires_grad:
            torch.nn.init.normal_(param, std=0.01)
    folder = elite.export_adapter(tiny_enhancer, config, str(tiny_model_dir), tmp_path / "adapter")
    reloaded = elite.load_adapter(folder, torch.device("cpu"), torch.float32)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    cpu = torch.device("cpu")
    assert torch.equal(elite.enhance(tiny_enhancer, images, 2, cpu, torch.float32),
                       elite.enhance(reloaded, images, 2, cpu, torch.float32))
    assert json.loads((folder / "adapter.json").read_text())["model"]["unet_lora_rank"] == config.unet_lora_rank
    assert all(module.merged for module in reloaded.modules() if isinstance(module, elite.BaseTunerLayer))


def test_lpips_is_given_images_in_minus_one_to_one():
    torch.manual_seed(0)
    metric = elite.make_lpips("alex", pretrained=False)
    a, b = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    expected = metric((a + 1) / 2, (b + 1) / 2, normalize=True).flatten()  # the [0, 1] route of the lpips package
    assert torch.allclose(elite.lpips_per_image(metric, a, b), expected, atol=1e-6)


def test_examples_are_best_median_worst_then_the_rest():
    gain = torch.tensor([0.5, -0.2, 0.9, 0.1, 0.0, 0.7, -0.5, 0.3, 0.2])
    picks = elite.pick_examples(gain, 9)
    assert picks[:3] == [2, 5, 0] and picks[3] == 8 and picks[4:7] == [4, 1, 6] and sorted(picks) == list(range(9))
    assert elite.pick_examples(gain, 2) == [2, 5]


def test_only_full_runs_publish_unless_results_dir_is_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs = tmp_path / "run"
    (outputs / "comparisons").mkdir(parents=True)
    (outputs / "metrics.json").write_text("{}")
    (outputs / "comparisons" / "example_00.png").write_bytes(b"png")
    assert elite.publish_results(outputs, smoke_config(), in_colab=False) is None
    assert elite.publish_results(outputs, elite.Config(), in_colab=True) is None  # Colab's working dir is lost
    assert not (tmp_path / "results").exists()
    assert elite.publish_results(outputs, elite.Config(), in_colab=False) == elite.Path("results")
    elsewhere = tmp_path / "published"
    assert elite.publish_results(outputs, smoke_config(results_dir=str(elsewhere)), in_colab=True) == elsewhere
    assert (elsewhere / "comparisons" / "example_00.png").read_bytes() == b"png"
    assert (tmp_path / "results" / "metrics.json").read_text() == "{}"


def test_enhance_file_keeps_the_aspect_and_saves_the_result(tiny_enhancer, tmp_path):
    path = tmp_path / "render.png"
    Image.new("RGB", (120, 80), (90, 120, 200)).save(path)
    original, enhanced = elite.enhance_file(path, tiny_enhancer, 64, torch.device("cpu"), torch.float32,
                                            tmp_path / "out.png")
    assert original.shape == enhanced.shape == (3, 64, 96) and enhanced.abs().max() <= 1
    assert Image.open(tmp_path / "out.png").size == (96, 64)


def test_single_family_report_has_the_sides_and_the_paired_gain_per_family():
    probe = {"blur": {"psnr_degraded": torch.tensor([20.0, 22.0]), "psnr_enhanced": torch.tensor([23.0, 22.5]),
                      "psnr_zero_shot": torch.tensor([15.0, 16.0])}}
    report = elite.single_family(probe, ["psnr"])
    assert set(report["blur"]["psnr"]) == {"degraded", "zero_shot", "enhanced", "enhanced_vs_degraded"}
    assert report["blur"]["psnr"]["enhanced_vs_degraded"] == {**report["blur"]["psnr"]["enhanced_vs_degraded"],
                                                              "mean": 1.75, "n": 2, "better": 2}


def test_the_results_archive_holds_metrics_comparisons_and_the_adapter(tmp_path):
    (tmp_path / "comparisons").mkdir()
    (tmp_path / "adapter").mkdir()
    for name, data in {"metrics.json": b"{}", "comparisons/example_00.png": b"png", "adapter/adapter.json": b"{}",
                       "adapter/adapter.safetensors": b"weights", "checkpoints/step_000002.pt": b"big"}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    archive = elite.results_archive(tmp_path)
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == ["adapter/adapter.json", "adapter/adapter.safetensors",
                                             "comparisons/example_00.png", "metrics.json"]
        assert opened.read("adapter/adapter.safetensors") == b"weights"
    first = archive.read_bytes()
    assert elite.results_archive(tmp_path).read_bytes() == first  # the same files, the same archive


def test_lpips_to_targets_equals_the_lpips_package_across_batches():
    torch.manual_seed(0)
    metric = elite.make_lpips("alex", pretrained=False)
    targets, first, second = (torch.rand(10, 3, 32, 32) * 2 - 1 for _ in range(3))  # 10 images: batches of 8 and 2
    distances = elite.lpips_to_targets(metric, {"first": first, "second": second}, targets)
    for name, images in (("first", first), ("second", second)):
        assert torch.allclose(distances[name], metric(images, targets).flatten(), atol=1e-6)
