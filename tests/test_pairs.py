"""Real (degraded, clean) pairs: a folder of degraded/ and clean/ images matched by stem, or parquet with a
'degraded' column; the same crop for both sides, and what cannot be paired reported."""
import io
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageFilter

from notebook_library import elite, smoke_config, smoke_environ


def render_of(face: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A stand-in for a rendering of the same frame: softer, and at another resolution."""
    return face.filter(ImageFilter.GaussianBlur(2)).resize(size)


def write_pairs_folder(folder, count: int = 10):
    """`count` matched pairs (captures 96², renders 64²), plus what a real export also holds: a render without a
    capture, a capture without a render, a pair of different framing, and a grayscale render."""
    for side in elite.PAIR_FOLDERS:
        (folder / side).mkdir(parents=True, exist_ok=True)
    for k in range(count):
        face = elite.synthetic_face(random.Random(k), 96)
        face.save(folder / "clean" / f"frame_{k:03d}.png")
        render = render_of(face, (64, 64))
        (render.convert("L") if k == 0 else render).save(folder / "degraded" / f"frame_{k:03d}.jpg")
    elite.synthetic_face(random.Random(90), 96).save(folder / "degraded" / "render_only.png")
    elite.synthetic_face(random.Random(91), 96).save(folder / "clean" / "capture_only.png")
    elite.synthetic_face(random.Random(92), 96).save(folder / "clean" / "wide.png")
    elite.synthetic_face(random.Random(92), 96).resize((120, 80)).save(folder / "degraded" / "wide.png")
    return folder


@pytest.fixture
def pairs_folder(tmp_path):
    return write_pairs_folder(tmp_path / "renders")


def test_a_pairs_folder_is_recognised_and_checked(pairs_folder, tmp_path):
    assert elite.check_dataset_folder(str(pairs_folder)) == "pairs"
    assert elite.dataset_layout(str(pairs_folder / "clean")) == "clean"
    (tmp_path / "half" / "degraded").mkdir(parents=True)
    (tmp_path / "half" / "clean").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "half" / "clean" / "a.png")
    with pytest.raises(ValueError, match=r"half/degraded holds no parquet files and no images"):
        elite.check_dataset_folder(str(tmp_path / "half"))


def test_pairs_are_matched_by_stem_cropped_alike_and_the_rest_reported(pairs_folder, tmp_path):
    config = smoke_config(num_images=11, test_fraction=0.5)  # all 11 stems in both folders are tried
    subset = elite.build_subset(config, str(pairs_folder), tmp_path / "data")
    manifest = subset.manifest
    assert manifest["layout"] == "pairs" and subset.degraded.shape == subset.images.shape == (10, 64, 64, 3)
    assert manifest["skipped"] == {"degraded and clean aspect ratios differ": 1}  # the wide pair
    assert manifest["only_in_degraded"] == {"count": 1, "first": ["render_only"]}
    assert manifest["only_in_clean"] == {"count": 1, "first": ["capture_only"]}
    assert sorted(row["stem"] for row in manifest["rows"]) == [f"frame_{k:03d}" for k in range(10)]
    colour = [i for i, row in enumerate(manifest["rows"]) if row["stem"] != "frame_000"]  # frame 0 is grayscale
    clean, degraded = subset.images[colour].astype(float), subset.degraded[colour].astype(float)
    assert np.abs(clean - degraded).mean(axis=(1, 2, 3)).max() < 25  # the same framing: blur apart, one picture
    assert np.abs(clean - np.roll(degraded, 1, axis=0)).mean(axis=(1, 2, 3)).min() > 25  # unlike another frame
    report = elite.data_report(subset, 64)
    assert "real (degraded, clean) pairs" in report and "only in degraded/, not used: render_only" in report
    assert (tmp_path / "data" / "degraded.npy").exists()
    assert elite.prepare_data(config, tmp_path).degraded.shape == subset.degraded.shape  # and read back


def test_a_grayscale_side_becomes_rgb(tmp_path):
    folder = write_pairs_folder(tmp_path / "renders", count=4)
    subset = elite.build_subset(smoke_config(num_images=4, test_fraction=0.5), str(folder), tmp_path / "data")
    row = next(i for i, row in enumerate(subset.manifest["rows"]) if row["stem"] == "frame_000")
    assert subset.degraded[row].shape == (64, 64, 3)
    assert np.array_equal(subset.degraded[row][..., 0], subset.degraded[row][..., 2])  # gray, as RGB


def test_real_pairs_train_and_test_on_their_own_degradation(pairs_folder, tmp_path):
    config = smoke_config(num_images=10, test_fraction=0.5, batch_size=3)
    subset = elite.build_subset(config, str(pairs_folder), tmp_path / "data")
    pairs = elite.ImagePairs(subset, config)
    degraded, clean, records = pairs.train_batch(0)
    assert records == [{elite.REAL: {}}] * 3
    indices = [pairs.epoch_order(0)[j] for j in range(3)]
    assert torch.equal(degraded, elite.to_model_range(pairs.train_inputs[indices]))
    assert torch.equal(clean, elite.to_model_range(pairs.train_images[indices]))
    test_degraded, _, test_records = pairs.test_set()
    assert test_records == [{elite.REAL: {}}] * len(test_records)
    assert torch.equal(test_degraded, elite.to_model_range(pairs.test_inputs))


def test_augmentation_adds_synthetic_families_on_top_of_real_ones(pairs_folder, tmp_path):
    config = smoke_config(num_images=10, test_fraction=0.5, batch_size=4, augment_real_pairs=True,
                          family_probability=0.1)  # some get no family on top, some get one or more
    pairs = elite.ImagePairs(elite.build_subset(config, str(pairs_folder), tmp_path / "data"), config)
    records = [record for step in range(4) for record in pairs.train_batch(step)[2]]
    assert all(elite.REAL in record for record in records)
    assert any(len(record) > 1 for record in records) and any(len(record) == 1 for record in records)
    per_family = elite.per_family({"m_degraded": torch.ones(len(records))}, records, ["m"])
    assert per_family[elite.REAL]["m"]["degraded"]["n"] == len(records)


def test_augmentation_needs_real_pairs(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="augment_real_pairs adds synthetic degradations on top of real pairs"):
        elite.check_inputs(smoke_config(dataset=str(tmp_path), augment_real_pairs=True))


def test_parquet_pairs_with_a_degraded_column(tmp_path):
    def encoded(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    faces = [elite.synthetic_face(random.Random(k), 80) for k in range(8)]
    table = pa.table({"image": [encoded(face) for face in faces],
                      "degraded": [encoded(render_of(face, (80, 80))) for face in faces], "label": [0] * 8})
    (tmp_path / "pairs").mkdir()
    pq.write_table(table, tmp_path / "pairs" / "part.parquet")
    assert elite.check_dataset_folder(str(tmp_path / "pairs")) == "pairs"
    subset = elite.build_subset(smoke_config(num_images=8), str(tmp_path / "pairs"), tmp_path / "data")
    assert subset.manifest["layout"] == "pairs" and subset.degraded.shape == (8, 64, 64, 3)
    assert not np.array_equal(subset.degraded, subset.images)


def test_a_smoke_run_trains_and_evaluates_on_a_pairs_folder(notebook_kernel, tmp_path):
    folder = write_pairs_folder(tmp_path / "renders", count=12)
    run_dir = tmp_path / "pairs_run"
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir, dataset=folder))
    assert finished, text[-3000:]
    assert "real (degraded, clean) pairs" in text and "only in degraded/, not used: render_only" in text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["layout"] == "pairs" and metrics["data"]["used"] == 12
    assert list(metrics["per_degradation"]) == [elite.REAL]  # no synthetic families without augmentation
    assert metrics["per_degradation"][elite.REAL]["lpips_alex"]["enhanced"]["n"] == metrics["test_set"]["n"] == 6
    assert len(list((run_dir / "comparisons").glob("example_*.png"))) == 6


def test_an_empty_cell_in_parquet_pairs_is_skipped_as_undecodable(tmp_path):
    faces = [elite.synthetic_face(random.Random(k), 80) for k in range(8)]

    def encoded(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    degraded = [encoded(face) for face in faces[:7]] + [None]
    (tmp_path / "pairs").mkdir()
    pq.write_table(pa.table({"image": [encoded(face) for face in faces], "degraded": degraded}),
                   tmp_path / "pairs" / "part.parquet")
    subset = elite.build_subset(smoke_config(num_images=8), str(tmp_path / "pairs"), tmp_path / "data")
    assert len(subset.images) == 7 and subset.manifest["skipped"] == {"undecodable degraded image": 1}
