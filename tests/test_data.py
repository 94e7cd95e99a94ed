"""The data: CelebA-HQ-schema parquet, the shuffled split subset and its cache, awkward images, dataset folders."""
import collections
import io
import math
import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import ClassLabel, Features, Image as ImageFeature
from PIL import Image, ImageFilter

from notebook_library import elite, smoke_config

CONFIG = smoke_config()  # 16 images at 64 px: test 6, val 2, train 8

def encoded(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()

def face(k: int, size: int = 96) -> Image.Image:
    return elite.synthetic_face(random.Random(k), size)

def render(image: Image.Image, size: tuple[int, int]) -> Image.Image:  # a rendering of the same frame: softer, smaller
    return image.filter(ImageFilter.GaussianBlur(0.8)).resize(size)

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    return str(elite.write_synthetic_celeba(tmp_path_factory.mktemp("faces"), 40, 96, seed=0))

@pytest.fixture(scope="module")
def subset(source, tmp_path_factory):
    return elite.build_subset(CONFIG, source, tmp_path_factory.mktemp("run") / "data")

def test_synthetic_parquet_has_the_celeba_hq_schema(source):
    assert Features.from_arrow_schema(pq.read_schema(f"{source}/faces.parquet")) == Features(
        {"image": ImageFeature(), "label": ClassLabel(names=["female", "male"])})
    table = pq.read_table(f"{source}/faces.parquet").to_pylist()
    assert [row["label"] for row in table] == [0] * 20 + [1] * 20  # sorted by label, as on the Hub
    assert Image.open(io.BytesIO(table[0]["image"]["bytes"])).size == (96, 96)

def test_the_subset_is_shuffled_reproducible_and_split_without_overlap(source, subset, tmp_path):
    rows = subset.manifest["rows"]
    assert subset.images.shape == (16, 64, 64, 3) and subset.images.dtype == np.uint8 and subset.degraded is None
    assert set(collections.Counter(row["label"] for row in rows)) == {0, 1}  # although the source is sorted
    again = elite.build_subset(CONFIG, source, tmp_path / "a")
    assert again.manifest["rows"] == rows and np.array_equal(again.images, subset.images)
    other = elite.build_subset(smoke_config(seed=5), source, tmp_path / "b").manifest["rows"]
    assert {row["row"] for row in other} != {row["row"] for row in rows} and len({row["row"] for row in rows}) == 16
    n_test = math.ceil(16 * CONFIG.test_fraction)
    assert [row["split"] for row in rows] == ["test"] * n_test + ["val"] * CONFIG.val_size + ["train"] * (
        16 - n_test - CONFIG.val_size)
    for row in rows:
        held_out = row["split"] != "train"
        assert bool(row["degradation"]) == held_out and set(row["degradation"] or {}) <= set(elite.DEGRADATION_FAMILIES)
        assert list(row["probe"]) == (elite.enabled_families(CONFIG) if row["split"] == "test" else [])
        assert all(list(record) == [family] for family, record in row["probe"].items())

def test_the_cache_is_read_back_and_built_again_where_drive_lost_part_of_it(source, tmp_path, capsys):
    config = smoke_config(dataset=str(shutil.copytree(source, tmp_path / "copy")))
    images = tmp_path / "run" / "data" / "images.npy"
    first = elite.prepare_data(config, tmp_path / "run")
    whole = images.read_bytes()
    for lost in (b"", whole[:len(whole) // 2]):  # after a VM loss: the manifest reached Drive, images.npy not whole
        images.unlink() if not lost else images.write_bytes(lost)
        again = elite.prepare_data(config, tmp_path / "run")
        assert "building it again" in capsys.readouterr().out and images.read_bytes() == whole
        assert np.array_equal(again.images, first.images) and again.manifest == first.manifest
    shutil.rmtree(tmp_path / "copy")  # streaming again would now fail
    assert np.array_equal(elite.prepare_data(config, tmp_path / "run").images, first.images)

PALETTE = Image.new("P", (80, 80), 0)
PALETTE.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red (made transparent below), index 1 blue
PALETTE.paste(1, (40, 0, 80, 80))
WIDE = Image.fromarray(np.repeat(np.repeat([[0, 255]], 40, axis=1), 40, axis=0).astype(np.uint8)).convert("RGB")
WIDE.getexif()[0x0112] = 6  # rotate 90 degrees clockwise to display: the black left half ends up on top

@pytest.mark.parametrize("data, status, pixels", [
    (encoded(Image.new("L", (80, 80), 120)), "ok", {(0, 0): (120, 120, 120)}),
    (encoded(PALETTE, transparency=0), "ok", {(0, 0): (255, 255, 255), (0, 79): (0, 0, 255)}),
    (encoded(Image.new("RGBA", (80, 80), (255, 0, 0, 0))), "ok", {(0, 0): (255, 255, 255)}),
    (encoded(Image.new("RGBA", (80, 80), (0, 0, 0, 128))), "ok", {(0, 0): (127, 127, 127)}),
    (encoded(Image.new("CMYK", (80, 80), (0, 255, 255, 0)), "JPEG"), "ok", {(0, 0): (255, 0, 0)}),
    (encoded(Image.fromarray(np.full((80, 80), 32896, dtype=np.uint16))), "ok", {(0, 0): (128, 128, 128)}),
    (encoded(WIDE, "JPEG", exif=WIDE.getexif()), "upscaled", {(10, 20): (0, 0, 0), (70, 20): (255, 255, 255)}),
    (encoded(face(0))[:600], "undecodable", None), (b"not an image at all", "undecodable", None),
    (None, "undecodable", None), (encoded(Image.new("RGB", (300, 60))), "aspect ratio above 2:1", None),
    (encoded(Image.new("RGB", (60, 130))), "aspect ratio above 2:1", None),
    (encoded(Image.new("RGB", (40, 40), (1, 2, 3))), "upscaled", None)])
def test_awkward_images_become_8bit_rgb_squares_or_are_skipped_with_a_reason(data, status, pixels):
    arrays, got = elite.to_squares({"image": {"bytes": data, "path": None}}, 64)
    assert got == status and (arrays is None) == (status not in ("ok", "upscaled"))
    assert arrays is None or (arrays[0].shape == (64, 64, 3) and arrays[0].dtype == np.uint8)
    for (row, col), colour in (pixels or {}).items():
        image = elite.decode_rgb(data)  # (70, 20) lies outside an image left unrotated
        assert image.mode == "RGB" and np.abs(np.asarray(image)[row, col].astype(int) - colour).max() <= 2, (row, col)

def test_too_few_usable_images_fail_clearly(tmp_path):
    for k in range(3):
        face(k, 80).save(tmp_path / f"render_{k}.png")
    (tmp_path / "broken.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"Only 3 usable images.*'undecodable': 1.*needs at least 9"):
        elite.build_subset(CONFIG, str(tmp_path), tmp_path / "run" / "data")
    assert not (tmp_path / "run").exists()

def test_dataset_layout_refuses_folders_it_cannot_use(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset='.*nowhere' is not a folder"):
        elite.dataset_layout(str(tmp_path / "nowhere"))
    for name in ("images", "empty", "broken", "wrong"):
        (tmp_path / name).mkdir()
    face(0, 80).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "broken" / "part.parquet").write_bytes(b"not parquet")
    pq.write_table(pa.table({"img": [{"bytes": encoded(face(0))}], "label": [0]}), tmp_path / "wrong" / "part.parquet")
    assert elite.dataset_layout(str(tmp_path / "images")) == "clean"
    for name, message in (("empty", "empty holds no parquet files and no images"), ("broken", "cannot be read"),
                          ("wrong", r"has the columns \['img', 'label'\]; it needs 'image'")):
        with pytest.raises(ValueError, match=f"dataset: .*{message}"):
            elite.dataset_layout(str(tmp_path / name))

def test_real_pairs_from_folders_matched_by_stem_and_from_parquet(tmp_path, capsys):
    clean, degraded = (tmp_path / "pairs" / side for side in ("clean", "degraded"))
    clean.mkdir(parents=True), degraded.mkdir()
    for k in range(10):  # 3:2 frames: a crop that differed between the sides would show
        frame = face(k, 120).crop((0, 20, 120, 100))
        frame.save(clean / f"frame_{k}.png"), render(frame, (90, 60)).save(degraded / f"frame_{k}.jpg")
    face(90).save(degraded / "render_only.png"), face(91).save(clean / "capture_only.png")
    face(92).save(clean / "wide.png"), face(92).resize((120, 80)).save(degraded / "wide.png")  # another framing
    manifest = (subset := elite.build_subset(smoke_config(num_images=11), str(clean.parent), tmp_path)).manifest
    assert subset.degraded.shape == subset.images.shape == (10, 64, 64, 3) and manifest["layout"] == "pairs"
    assert manifest["read"] == {"upscaled": 10, "degraded and clean aspect ratios differ": 1}
    assert "2 stem(s) in only one of degraded/ and clean/, not used: ['capture_only', 'render_only']" in \
        capsys.readouterr().out
    assert sorted(row["stem"] for row in manifest["rows"]) == [f"frame_{k}" for k in range(10)]
    difference = np.abs(subset.images[:, None].astype(float) - subset.degraded[None]).mean(axis=(2, 3, 4))
    assert difference.diagonal().max() < 12 < 20 < (difference + 99 * np.eye(10)).min()  # one picture, blur apart
    assert all(row["degradation"] == ({elite.REAL: {}} if row["split"] != "train" else None) and row["probe"] == {}
               for row in manifest["rows"])
    faces = [face(k, 80) for k in range(10)]
    (tmp_path / "parquet").mkdir()  # no label column: it may be absent
    pq.write_table(pa.table({"image": [{"bytes": encoded(f)} for f in faces], "degraded": [
        {"bytes": encoded(render(f, (80, 80)))} for f in faces]}), tmp_path / "parquet" / "part.parquet")
    parquet = elite.build_subset(smoke_config(num_images=10), str(tmp_path / "parquet"), tmp_path / "data2")
    assert parquet.manifest["layout"] == "pairs" and parquet.degraded.shape == parquet.images.shape == (10, 64, 64, 3)
    assert 0 < np.abs(parquet.images.astype(float) - parquet.degraded).mean() < 12

def test_image_pairs_are_pure_functions_of_the_manifest_and_the_index(source, subset, tmp_path):
    first, second = (elite.ImagePairs(s, CONFIG) for s in (subset, elite.build_subset(CONFIG, source, tmp_path)))
    for split, family in (("test", None), ("val", None), ("test", "blur")):
        a, b = (pairs.held_out(split, family) for pairs in (first, second))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] and not torch.equal(a[0], a[1])
    batch, _, again = first.train_batch(5), second.train_batch(2), second.train_batch(5)  # 5: in the second epoch
    assert torch.equal(batch[0], again[0]) and torch.equal(batch[1], again[1]) and batch[2] == again[2]
    assert batch[0].shape == (2, 3, 64, 64) and not torch.equal(batch[0], second.train_batch(6)[0])
