"""Subset drawing, caching, splitting and bad input."""
import collections
import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from notebook_library import elite, smoke_config


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """40 synthetic faces as CelebA-HQ-schema parquet, sorted by label like the Hub."""
    return str(elite.write_synthetic_celeba(tmp_path_factory.mktemp("faces"), 40, 96, seed=0))


def encoded(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def test_synthetic_parquet_has_the_celeba_schema(source):
    stream = elite.load_dataset("parquet", data_files=f"{source}/*.parquet", split="train", streaming=True)
    assert stream.features["label"].names == ["female", "male"]
    row = next(iter(stream))
    assert isinstance(row["image"], Image.Image) and row["image"].size == (96, 96)


def test_subset_is_balanced_reproducible_and_split_without_leakage(source, tmp_path):
    config = smoke_config(num_images=20, test_fraction=0.2, resolution=64)
    images, manifest, _ = elite.build_subset(config, source, tmp_path / "a")
    again = elite.build_subset(config, source, tmp_path / "b").manifest
    other_seed = elite.build_subset(smoke_config(num_images=20, test_fraction=0.2, seed=5), source,
                                    tmp_path / "c").manifest
    rows = manifest["rows"]
    assert images.shape == (20, 64, 64, 3) and images.dtype == np.uint8
    assert again["rows"] == rows and other_seed["rows"] != rows
    assert sum(r["label"] for r in rows) == 10  # 10 of each label although the source is sorted by label
    train = {r["row"] for r in rows if r["split"] == "train"}
    test = {r["row"] for r in rows if r["split"] == "test"}
    assert not train & test and len(test) == 4
    assert sorted(r["label"] for r in rows if r["split"] == "test") == [0, 0, 1, 1]
    assert all(r["degradation"] for r in rows if r["split"] == "test")


def test_the_subset_is_built_once_then_read_from_the_cache(source, tmp_path):
    config = smoke_config(num_images=12, dataset=source)
    images, manifest, degraded = elite.prepare_data(config, tmp_path)
    assert manifest["source"] == source and manifest["requested"] == 12 and len(images) == 12
    assert manifest["layout"] == "clean" and degraded is None
    manifest_path = tmp_path / "data" / "manifest.json"
    manifest_path.write_text(json.dumps(manifest | {"marker": True}))
    assert elite.prepare_data(config, tmp_path).manifest.get("marker")  # read, not rebuilt
    assert not list((tmp_path / "data").glob(".*.partial"))


def test_offline_runs_read_synthetic_faces_unless_dataset_is_a_local_folder(source, tmp_path):
    assert elite.data_source(smoke_config(dataset=source), tmp_path) == source
    synthetic = elite.data_source(smoke_config(), tmp_path)  # the default Hub id is never downloaded offline
    assert synthetic == str(tmp_path / "synthetic_source") and (tmp_path / "synthetic_source" / "faces.parquet").exists()
    assert elite.data_source(elite.Config(), tmp_path) == "mattymchen/celeba-hq"


def test_more_images_requested_than_usable_are_reported(tmp_path):
    folder = tmp_path / "renders"
    folder.mkdir()
    for k in range(10):
        elite.synthetic_face(random.Random(k), 80).save(folder / f"render_{k}.png")
    (folder / "broken.png").write_bytes(b"garbage")
    images, manifest, _ = elite.build_subset(smoke_config(num_images=16, test_fraction=0.2), str(folder), tmp_path / "d")
    assert (manifest["requested"], len(manifest["rows"]), manifest["skipped"]) == (16, 10, {"undecodable": 1})


def test_test_pairs_are_identical_across_runs(source, tmp_path):
    config = smoke_config(num_images=12)
    first = elite.ImagePairs(elite.build_subset(config, source, tmp_path / "a"), config)
    second = elite.ImagePairs(elite.build_subset(config, source, tmp_path / "b"), config)
    for a, b in zip(first.test_set(), second.test_set()):
        assert a == b if isinstance(a, list) else torch.equal(a, b)


def test_training_batches_are_a_function_of_the_step(source, tmp_path):
    config = smoke_config(num_images=12)
    pairs = elite.ImagePairs(elite.build_subset(config, source, tmp_path), config)
    degraded, clean, records = pairs.train_batch(3)
    again = pairs.train_batch(3)
    assert torch.equal(degraded, again[0]) and torch.equal(clean, again[1]) and records == again[2]
    assert not torch.equal(degraded, pairs.train_batch(4)[0])
    assert degraded.shape == (config.batch_size, 3, 64, 64) and degraded.min() >= -1 and degraded.max() <= 1


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.new("L", (80, 80), 120), "ok"),
    (lambda: Image.new("RGBA", (80, 80), (10, 20, 30, 128)), "ok"),
    (lambda: Image.new("LA", (80, 80), (90, 128)), "ok"),
    (lambda: Image.new("P", (80, 80), 3), "ok"),
    (lambda: Image.new("CMYK", (80, 80), (0, 50, 100, 0)), "ok"),
    (lambda: Image.fromarray(np.full((80, 80), 40000, dtype=np.uint16)), "ok"),
    (lambda: Image.new("RGB", (40, 40), (1, 2, 3)), "upscaled"),
])
def test_convertible_images_become_8bit_rgb(make, expected):
    image = make()
    data = encoded(image, "JPEG" if image.mode == "CMYK" else "PNG")
    (result,), status = elite.to_square_rgb(data, 64)
    assert status == expected and result.mode == "RGB" and result.size == (64, 64)


def test_sixteen_bit_keeps_its_brightness():
    image = Image.fromarray(np.full((80, 80), 40000, dtype=np.uint16))
    (result,), _ = elite.to_square_rgb(encoded(image), 64)
    assert abs(np.asarray(result).mean() - 40000 / 257) < 1


@pytest.mark.parametrize("data, reason", [
    (b"not an image at all", "undecodable"),
    (encoded(Image.new("RGB", (300, 60))), "aspect ratio above 2:1"),
])
def test_unusable_images_are_skipped_with_a_reason(data, reason):
    assert elite.to_square_rgb(data, 64) == (None, reason)


def test_too_few_usable_images_fail_clearly(tmp_path):
    folder = tmp_path / "renders"
    folder.mkdir()
    Image.new("RGB", (80, 80)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="usable images"):
        elite.build_subset(smoke_config(num_images=12), str(folder), tmp_path / "data")


@pytest.mark.parametrize("mode", elite.RUN_MODES)
def test_a_missing_dataset_folder_is_refused_in_every_mode(tmp_path, mode):
    with pytest.raises(FileNotFoundError, match=r"dataset='.*nowhere' is not a folder"):
        elite.check_inputs(elite.Config(run_mode=mode, dataset=str(tmp_path / "nowhere")))
    Image.new("RGB", (80, 80)).save(tmp_path / "render.png")
    elite.check_inputs(elite.Config(run_mode=mode, dataset=str(tmp_path)))  # a folder of images is fine


def test_image_folder_is_accepted(tmp_path):
    folder = tmp_path / "renders"
    folder.mkdir()
    for k in range(8):
        elite.synthetic_face(random.Random(k), 80).save(folder / f"render_{k}.png")
    images, manifest, _ = elite.build_subset(smoke_config(num_images=8), str(folder), tmp_path / "data")
    assert images.shape == (8, 64, 64, 3) and len(manifest["rows"]) == 8


def test_empty_source_fails_clearly(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    elite.write_synthetic_celeba(folder, 0, 64, seed=0)
    with pytest.raises(ValueError, match="holds no rows"):
        elite.build_subset(smoke_config(), str(folder), tmp_path / "data")


def write_parquet(folder, columns: dict):
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / "part.parquet")
    return folder


def jpeg_bytes(k: int) -> bytes:
    buffer = io.BytesIO()
    elite.synthetic_face(random.Random(k), 80).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_dataset_folder_that_cannot_be_read_is_refused_up_front(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no parquet files and no images"):
        elite.check_inputs(smoke_config(dataset=str(tmp_path / "empty")))
    wrong = write_parquet(tmp_path / "wrong", {"img": [{"bytes": jpeg_bytes(0), "path": None}], "label": [0]})
    with pytest.raises(ValueError, match=r"has the columns \['img', 'label'\]; it needs an 'image' column"):
        elite.check_inputs(smoke_config(dataset=str(wrong)))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "part.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        elite.check_inputs(smoke_config(dataset=str(tmp_path / "broken")))


def test_string_labels_are_balanced_like_class_indices(tmp_path):
    labels = ["female"] * 10 + ["male "] * 10  # as a user's own table might hold them
    folder = write_parquet(tmp_path / "faces", {"image": [{"bytes": jpeg_bytes(k), "path": None} for k in range(20)],
                                                 "label": labels})
    elite.check_inputs(smoke_config(dataset=str(folder)))
    manifest = elite.build_subset(smoke_config(num_images=12, test_fraction=0.5), str(folder), tmp_path / "data").manifest
    counts = collections.Counter((row["split"], row["label"]) for row in manifest["rows"])
    assert counts == {("train", "female"): 3, ("test", "female"): 3, ("train", "male"): 3, ("test", "male"): 3}
