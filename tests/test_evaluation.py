"""Metrics against formulas worked by hand (PSNR, SSIM, CSIM, harm outside the defect), the identity network against
the weights file's keys, the statistics of the report, the comparison of runs, the adapter and a run's files."""
import ast
import hashlib
import json
import math
import shutil
import zipfile

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from notebook_library import FIXTURES, elite, random_images, smoke_config

CPU = torch.device("cpu")

def t_interval(values: np.ndarray) -> list[float]:
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))  # by hand
    return [values.mean() - half, values.mean() + half]

def test_psnr_is_ten_log10_of_one_over_the_unit_scale_mse_and_ssim_is_one_only_for_identical_images():
    torch.manual_seed(0)
    a, b = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    mse = (((a.double() + 1) / 2 - (b.double() + 1) / 2) ** 2).mean(dim=(1, 2, 3)).numpy()
    per_image = elite.score({"b": b, "same": a, "noisy": (a + 0.3 * b).clamp(-1, 1), "flip": a.flip(-1)}, a, {},
                            CPU, batch_size=2)  # batches of 2 and 1
    assert np.allclose(per_image["psnr_b"].numpy(), 10 * np.log10(1 / mse), atol=1e-4)
    assert torch.equal(per_image["psnr_same"], torch.full((3,), elite.PSNR_CAP))  # identical: capped, not infinite
    assert torch.allclose(per_image["ssim_same"], torch.ones(3), atol=1e-6)
    assert torch.all(per_image["ssim_noisy"] < 0.99) and torch.all(per_image["ssim_flip"] < 0.5)

def test_the_identity_network_has_every_key_and_shape_of_the_arcface_weights_file():
    rows = [line.split("\t") for line in (FIXTURES / "arcface_ir_se50_state_dict.tsv").read_text().splitlines()[1:]]
    with torch.device("meta"):
        state = elite.IdentityEncoder().state_dict()
    assert {key: (tuple(value.shape), str(value.dtype).removeprefix("torch.")) for key, value in state.items()} == {
        key: (ast.literal_eval(shape), dtype) for key, shape, dtype in rows} and len(rows) == 397

def test_csim_embeddings_are_unit_length_of_psps_face_crop_and_a_face_against_itself_scores_1():
    encoder, about = elite.load_identity_encoder(pretrained=False, device=CPU)
    images = random_images(1, count=3, size=64)
    embeddings = encoder.features(images)
    cropped = F.adaptive_avg_pool2d(F.adaptive_avg_pool2d(images, 256)[:, :, 35:223, 32:220], 112)  # pSp's
    assert embeddings.shape == (3, 512) and torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(encoder(cropped), embeddings, atol=1e-6)
    scores = elite.score({"same": images, "other": images.roll(1, 0)}, images, {"csim": encoder}, CPU)
    assert torch.allclose(scores["csim_same"], torch.ones(3), atol=1e-5) and torch.all(scores["csim_other"] < 0.999)
    assert torch.allclose(scores["csim_other"], (embeddings.roll(1, 0) * embeddings).sum(dim=1), atol=1e-5)
    assert "random" in about["weights"] and "sha256" not in about

def test_real_identity_weights_load_strictly_through_torchs_cache_and_their_sha256_is_recorded(tmp_path,
                                                                                           monkeypatch):
    monkeypatch.setattr(elite, "IR_SE50_STAGES", elite.NARROW_STAGES)  # the same path with a small network
    with elite.seeded(7):
        torch.save(weights := elite.IdentityEncoder(elite.NARROW_STAGES).state_dict(), release := tmp_path / "w.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, path, *_, **__: shutil.copy(release, path))
    encoder, about = elite.load_identity_encoder(pretrained=True, device=CPU)
    assert about["sha256"] == hashlib.sha256(release.read_bytes()).hexdigest() and about["weights"] == elite.ARCFACE_URL
    assert all(torch.equal(value, weights[key]) for key, value in encoder.state_dict().items())
    assert (tmp_path / "hub" / "checkpoints" / "recognition_arcface_ir_se50.pth").is_file()  # cached for next time

def test_harm_outside_the_region_is_zero_for_a_model_that_changes_nothing_and_positive_for_one_that_blurs_all():
    clean, config = random_images(2, count=3, size=64), smoke_config()
    records = [{"blur": elite.family_parameters(config, "blur", 0.8, elite.generator_for("harm", k), local=True)}
               for k in range(3)]
    degraded = elite.degrade_batch(clean, records)
    assert torch.equal(elite.harm_outside(degraded, clean, records), torch.zeros(3))  # the input: untouched there
    blurred = TF.gaussian_blur(degraded, 9, 2.0)
    for image, target, record, harm in zip(blurred, clean, records, elite.harm_outside(blurred, clean, records)):
        outside = elite.region_mask(record["blur"]["region"], 64, 64) == 0
        expected = sum((image[c] - target[c]).abs()[outside].sum() for c in range(3)) / (2 * 3 * outside.sum())
        assert 0.005 < harm.item() == pytest.approx(expected.item(), rel=1e-5)  # mean |difference| in [0, 1] units
    everywhere = [{"noise": elite.family_parameters(config, "noise", 0.5, elite.generator_for("harm"))}]
    assert elite.harm_outside(clean[:1], clean[:1], everywhere).isnan().all()  # no region: no outside

def test_summary_is_the_mean_sample_std_and_student_t_interval():
    values = np.array([0.3, 0.1, 0.45, 0.2, 0.33, 0.27])
    summary = elite.summarize(torch.tensor(values))
    assert (summary["n"], summary["mean"], summary["std"]) == (6, pytest.approx(values.mean()),
                                                              pytest.approx(values.std(ddof=1)))
    assert summary["ci95"] == pytest.approx(t_interval(values), rel=1e-9)
    assert elite.summarize(torch.tensor([0.3, 0.3]))["ci95"] == [pytest.approx(0.3)] * 2  # no spread, no width

@pytest.mark.parametrize("metric", ["lpips_alex", "psnr"])
def test_paired_gain_is_the_t_test_of_the_per_image_gains(metric):
    baseline = np.array([0.50, 0.30, 0.62, 0.41, 0.55, 0.35])
    candidate = baseline + np.array([-0.02, -0.03, 0.01, -0.025, -0.015, -0.02])
    gain = baseline - candidate if metric == "lpips_alex" else candidate - baseline  # positive: candidate better
    result = elite.paired_gain(torch.tensor(candidate), torch.tensor(baseline), metric)
    t = gain.mean() / (gain.std(ddof=1) / math.sqrt(len(gain)))
    assert (result["mean"], result["n"], result["better"]) == (pytest.approx(gain.mean()), 6, int((gain > 0).sum()))
    assert result["ci95"] == pytest.approx(t_interval(gain), rel=1e-9)
    assert result["p"] == pytest.approx(2 * (1 - scipy.stats.t.cdf(abs(t), len(gain) - 1)), rel=1e-6)

def holm_by_hand(p: list[float]) -> list[float]:
    m, order, adjusted, running = len(p), np.argsort(p), [0.0] * len(p), 0.0
    for rank, index in enumerate(order):
        running = max(running, (m - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted

def test_holm_adjustment():
    assert elite.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    p = np.random.default_rng(0).uniform(0, 0.5, 12).tolist()
    adjusted = elite.holm(p)
    assert adjusted == pytest.approx(holm_by_hand(p)) and all(a <= 1 and a >= q for a, q in zip(adjusted, p))
    assert [adjusted[i] for i in np.argsort(p)] == sorted(adjusted)  # monotone in the raw p-values

def per_image_example(seed: int, n: int = 8) -> dict:  # every side; enhanced = degraded + a gain: p 1e-4 ... 0.5
    rng, per_image = np.random.default_rng(seed), {}
    for m in elite.METRICS:
        per_image |= {f"{m}_{side}": torch.tensor(rng.uniform(0, 1, n)) for side in elite.SIDES}
        shift = rng.uniform(0, 0.1) + rng.normal(0, 0.05, n)
        per_image[f"{m}_enhanced"] = per_image[f"{m}_degraded"] + torch.tensor(shift)
    return per_image

def test_paired_report_adds_p_holm_over_all_its_gains():
    report = elite.paired_report(per_image_example(1), elite.METRICS, ("degraded", "zero_shot"))
    gains = [g for gains in report.values() for g in gains.values()]
    assert len(gains) == 2 * len(elite.METRICS)
    assert all(set(g) == {"mean", "ci95", "n", "better", "p", "p_holm"} for g in gains)
    assert [g["p_holm"] for g in gains] == pytest.approx(holm_by_hand([g["p"] for g in gains]))

def test_per_family_uses_only_the_images_that_carry_each_family():
    per_image = {"psnr_degraded": torch.tensor([1.0, 2.0, 3.0, 4.0]), "psnr_enhanced": torch.tensor([2.0, 4, 6, 8])}
    records = [{"blur": {}}, {"blur": {}, "noise": {}}, {"noise": {}}, {"real": {}}]
    result = elite.per_family(per_image, records)
    assert set(result) == {"blur", "noise", "real"}
    assert result["blur"]["psnr"]["degraded"]["mean"] == 1.5 and result["noise"]["psnr"]["enhanced"]["mean"] == 5
    assert result["real"]["psnr"]["degraded"] == {"mean": 4.0, "std": 0.0, "n": 1, "ci95": [4.0, 4.0]}

def test_single_family_adjusts_over_all_families_together_and_summarises_the_harm_where_a_region_was():
    harm = {"blur": [0.01, math.nan, 0.03, 0.02, 0.04, math.nan, 0.01, 0.02], "noise": [math.nan] * 8}
    probe = {family: per_image_example(k) | {"harm_outside": torch.tensor(harm.get(family, [0.0] * 8))}
             for k, family in enumerate(("blur", "noise", "jpeg"))}
    report = elite.single_family(probe)
    gains = [report[f][m]["enhanced_vs_degraded"] for f in probe for m in elite.PROBE_METRICS]
    assert [g["p_holm"] for g in gains] == pytest.approx(holm_by_hand([g["p"] for g in gains]))  # 12, not 3 x 4
    assert set(report["blur"]["psnr"]) >= set(elite.SIDES) and "lpips_vgg" not in report["blur"]
    measured = np.array([h for h in harm["blur"] if not math.isnan(h)])  # the images whose blur was regional
    assert report["blur"]["harm_outside"]["n"] == 6 and report["blur"]["harm_outside"]["ci95"] == pytest.approx(
        t_interval(measured), rel=1e-6)  # float32 harm values
    assert "harm_outside" not in report["noise"] and report["jpeg"]["harm_outside"]["mean"] == 0

def test_examples_are_best_three_median_worst_three_then_the_rest():
    gain = torch.tensor([0.5, -0.2, 0.9, 0.1, 0.0, 0.7, -0.5, 0.3, 0.2, -0.1])
    picks = elite.pick_examples(gain, 10)  # descending: 2 5 0 7 8 3 4 9 1 6
    assert picks[:3] == [2, 5, 0] and picks[3] == 3 and picks[4:7] == [9, 1, 6] and picks[7:] == [7, 8, 4]
    assert elite.pick_examples(gain, 2) == [2, 5]

@pytest.mark.parametrize("size, expected", [((300, 200), (64, 96)), ((200, 333), (104, 64)),
                                            ((400, 100), (64, 256)), ((64, 64), (64, 64))])
def test_input_images_keep_their_aspect_in_multiples_of_8(tmp_path, size, expected):
    path = tmp_path / "render.png"
    Image.new("RGBA", size, (200, 100, 50, 255)).save(path)
    image = elite.load_input_image(path, 64)
    height, width = image.shape[-2:]
    assert image.shape == (1, 3, *expected) and height % 8 == width % 8 == 0 and min(height, width) == 64
    assert height * width <= 4 * 64**2 and abs(width / height - size[0] / size[1]) < 0.1 and image.abs().max() <= 1

def test_input_image_errors_name_the_field(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    Image.new("RGB", (500, 100)).save(tmp_path / "strip.png")
    for name, error, message in (("missing.png", FileNotFoundError, "input_image='.*' does not exist"),
                                 ("notes.png", ValueError, "input_image='.*' is not an image"),
                                 ("strip.png", ValueError, "input_image is 500x100")):
        with pytest.raises(error, match=message):
            elite.load_input_image(tmp_path / name, 64)

def test_exported_adapter_reloads_merged_to_the_training_models_outputs(tiny_enhancer, tiny_model_dir, tmp_path):
    torch.manual_seed(2)
    for param in (p for p in tiny_enhancer.parameters() if p.requires_grad):  # as if trained: every tensor moves
        torch.nn.init.normal_(param, std=0.01)
    folder = elite.export_adapter(tiny_enhancer, smoke_config(), str(tiny_model_dir), tmp_path / "adapter")
    reloaded, x = elite.load_adapter(folder, CPU, torch.float32), torch.rand(2, 3, 32, 32) * 2 - 1
    assert all(layer.merged for layer in reloaded.modules() if isinstance(layer, elite.BaseTunerLayer))
    expected = elite.enhance(tiny_enhancer, x, 2, CPU, torch.float32)  # LoRA beside the weights, unmerged
    assert (elite.enhance(reloaded, x, 2, CPU, torch.float32) - expected).abs().max() < 1e-4
    assert not any(p.requires_grad for p in reloaded.parameters())
    description = json.loads((folder / "adapter.json").read_text())
    (folder / "adapter.json").write_text(json.dumps(description | {"format": elite.RUN_FORMAT - 1}))
    with pytest.raises(ValueError, match="format"):
        elite.load_adapter(folder, CPU, torch.float32)

def test_results_archive_holds_metrics_comparisons_adapter_and_enhanced_images_only(tmp_path):
    files = {"metrics.json": b"{}", "comparisons/example_00.png": b"png", "comparisons/sub/a.png": b"a",
             "adapter/adapter.json": b"{}", "adapter/adapter.safetensors": b"w", "checkpoints/step_000002.pt": b"c",
             "run.json": b"{}", "training_log.csv": b"step", "data/images.npy": b"d", "face_enhanced.png": b"f",
             "face_enhanced_2.png": b"g", "face.png": b"input"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(elite.results_archive(tmp_path)) as archive:
        assert sorted(archive.namelist()) == sorted(n for n in files if n.split("/")[0] in (
            "metrics.json", "comparisons", "adapter") or "_enhanced" in n)
        assert archive.read("adapter/adapter.safetensors") == b"w"

def test_each_enhanced_image_gets_its_own_file_and_the_same_result_is_not_written_twice(tmp_path):
    first, second = random_images(3)
    assert (path := elite.save_result(first, tmp_path, "face")).name == "face_enhanced.png"
    assert elite.save_result(first, tmp_path, "face") == path and len(list(tmp_path.iterdir())) == 1
    assert elite.save_result(second, tmp_path, "face").name == "face_enhanced_2.png"
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(elite.to_pil(first)))  # the first is kept

def test_compare_runs_finds_runs_by_name_pairs_images_adjusts_over_all_and_leaves_out_another_test_set(tmp_path,
                                                                                                      capsys):
    rows = [{"row": i, **{f"{m}_enhanced": v for m, v in zip(elite.METRICS, values)}} for i, values in enumerate(
        [(0.2, 0.3, 0.6, 25.0, 0.8), (0.3, 0.4, 0.7, 24.0, 0.7), (0.25, 0.2, 0.5, 26.0, 0.9)])]
    mine = {"test_set": {"seed": 0, "rows_sha256": "a"}, "per_image": rows}
    worse = [{k: v + (0.05 if "lpips" in k else -1.0) if k != "row" else v for k, v in row.items()} for row in rows]
    for folder, test_set in (("other-smoke", mine["test_set"]), ("seed1", {"seed": 1, "rows_sha256": "b"})):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.json").write_text(json.dumps({"test_set": test_set, "per_image": worse}))
    report = elite.compare_with_runs(mine, "other, seed1, nowhere", tmp_path / "this-smoke", "smoke")  # name, folder
    printed = capsys.readouterr().out
    assert list(report) == ["other-smoke"] and "seed1 is left out: its test set differs (seed: 1 -> 0;" in printed
    assert f"nowhere: no metrics.json in {tmp_path / 'nowhere-smoke'}, {tmp_path / 'nowhere'}, nowhere" in printed
    gains = report["other-smoke"]
    assert gains["lpips_alex"]["mean"] == pytest.approx(0.05) and gains["psnr"]["mean"] == pytest.approx(1.0)
    assert gains["lpips_alex"]["better"] == 3 and gains["lpips_alex"]["n"] == 3
    p = [elite.paired_gain(torch.tensor([r[f"{m}_enhanced"] for r in rows]),
                           torch.tensor([r[f"{m}_enhanced"] for r in worse]), m)["p"] for m in elite.METRICS]
    assert [gains[m]["p_holm"] for m in elite.METRICS] == pytest.approx(elite.holm(p))
