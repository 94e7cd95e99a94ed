"""Each degradation family does what it claims, keeps shape/dtype/range, and is reproducible."""
import math

import pytest
import torch

from notebook_library import elite, smoke_config


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    """A synthetic face (3, 128, 128) in [0, 1]."""
    import random
    return elite.to_model_range(elite.np.asarray(elite.synthetic_face(random.Random(0), 128))[None])[0] / 2 + 0.5


def high_frequency_energy(image: torch.Tensor) -> float:
    """Mean squared difference between horizontally and vertically adjacent pixels."""
    return ((image[:, :, 1:] - image[:, :, :-1]) ** 2).mean().item() + ((image[:, 1:] - image[:, :-1]) ** 2).mean().item()


def apply(family: str, image: torch.Tensor, strength: float = 1.0, seed: int = 3) -> torch.Tensor:
    return elite.apply_degradation(image, {family: {"strength": strength, "seed": seed}})


@pytest.mark.parametrize("family", elite.DEGRADATION_FAMILIES)
def test_shape_dtype_range_and_change(face, family):
    out = apply(family, face)
    assert out.shape == face.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, face)


@pytest.mark.parametrize("family", elite.DEGRADATION_FAMILIES)
def test_strength_zero_is_identity(face, family):
    assert torch.equal(apply(family, face, strength=0.0), face)


@pytest.mark.parametrize("family", ["blur", "resample"])
def test_softening_families_remove_high_frequencies(face, family):
    assert high_frequency_energy(apply(family, face)) < 0.6 * high_frequency_energy(face)


def test_noise_raises_residual_variance_more_in_bright_areas():
    flat = torch.full((3, 64, 64), 0.1)
    flat[:, :, 32:] = 0.8
    residual = apply("noise", flat) - flat
    assert residual.var() > 1e-3
    assert residual[:, :, 32:].std() > residual[:, :, :32].std()  # shot noise grows with the signal


def test_jpeg_makes_8x8_block_boundaries(face):
    smooth = elite.blur(face, 1.0, None)  # blocking shows best on smooth content
    residual = (apply("jpeg", smooth) - smooth).abs().mean(dim=0)
    column_steps = (residual[:, 1:] - residual[:, :-1]).abs().mean(dim=0)  # (W - 1,)
    on_boundary = column_steps[7::8].mean()
    inside = torch.cat([column_steps[k::8] for k in range(7)]).mean()
    assert on_boundary > 1.3 * inside


def test_color_moves_channel_means(face):
    shift = (apply("color", face).mean(dim=(1, 2)) - face.mean(dim=(1, 2))).abs()
    assert shift.max() > 0.01


def test_ghost_adds_a_shifted_copy():
    image = torch.zeros(3, 64, 64)
    image[:, 28:36, 28:36] = 1.0
    out = apply("ghost", image)
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[28:36, 28:36] = False
    assert out[0][outside].max() > 0.1 and out[0][28:36, 28:36].min() < 1.0


def test_floaters_are_local_thin_strokes(face):
    changed = (apply("floaters", face, strength=0.3) - face).abs().amax(dim=0) > 0.05
    assert 0 < changed.float().mean() < 0.3


def test_same_record_same_image(face):
    record = elite.sample_degradation(smoke_config(), elite.generator_for(0, "test", 5))
    assert torch.equal(elite.apply_degradation(face, record), elite.apply_degradation(face, record))


def test_records_name_families_and_strengths_in_range():
    config = smoke_config(blur_strength=(0.3, 0.4), jpeg_strength=(0.0, 0.0))
    for k in range(50):
        record = elite.sample_degradation(config, elite.generator_for(1, k))
        assert record and set(record) <= set(elite.DEGRADATION_FAMILIES) - {"jpeg"}
        if "blur" in record:
            assert 0.3 <= record["blur"]["strength"] <= 0.4


def test_every_family_of_the_config_has_one_registered_function():
    assert sorted(elite.DEGRADATIONS) == sorted(elite.DEGRADATION_FAMILIES)
    assert elite.DEGRADATION_FAMILIES == ("floaters", "ghost", "blur", "resample", "color", "noise", "jpeg")


def test_records_read_as_one_line_per_family():
    assert elite.describe_record({"blur": {"strength": 0.4213, "seed": 3}, "jpeg": {"strength": 1.0, "seed": 4}}) == \
        "blur 0.42\njpeg 1.00"
    assert elite.describe_record({elite.REAL: {}, "noise": {"strength": 0.25, "seed": 1}}) == "real\nnoise 0.25"
