"""Each degradation family does what it claims, where it claims: shape, dtype, range, reproducibility, locality."""
import json
import math
import random

import pytest
import torch

from notebook_library import elite, smoke_config

CONFIG = smoke_config()
REGIONAL = [family for family in elite.DEGRADATION_FAMILIES if elite.DEGRADATIONS[family].scope in ("local", "either")]


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    """A synthetic face (3, 128, 128) in [0, 1]."""
    return elite.to_model_range(elite.np.asarray(elite.synthetic_face(random.Random(0), 128))[None])[0] / 2 + 0.5


@pytest.fixture(scope="module")
def texture() -> torch.Tensor:
    """Smooth random colour texture (3, 128, 128) in [0, 1]: detail everywhere, unlike a face's flat background."""
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(noise, size=(128, 128), mode="bilinear", align_corners=False)[0]


def params(family: str, strength: float = 1.0, seed: int = 3, local: bool | None = None) -> dict:
    return elite.family_parameters(CONFIG, family, strength, elite.generator_for("test", family, seed), local=local)


def apply(family: str, image: torch.Tensor, strength: float = 1.0, seed: int = 3, local: bool | None = None):
    return elite.apply_degradation(image, {family: params(family, strength, seed, local)})


def high_frequency_energy(image: torch.Tensor) -> float:
    """Mean squared difference between horizontally and vertically adjacent pixels."""
    return ((image[:, :, 1:] - image[:, :, :-1]) ** 2).mean().item() + ((image[:, 1:] - image[:, :-1]) ** 2).mean().item()


@pytest.mark.parametrize("family", elite.DEGRADATION_FAMILIES)
def test_shape_dtype_range_and_change(texture, family):
    out = apply(family, texture)
    assert out.shape == texture.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert (out - texture).abs().max() > 0.01


@pytest.mark.parametrize("family", elite.DEGRADATION_FAMILIES)
def test_strength_zero_is_identity(face, family):
    assert torch.equal(apply(family, face, strength=0.0), face)


@pytest.mark.parametrize("family", elite.DEGRADATION_FAMILIES)
def test_the_same_record_gives_the_same_image_also_after_a_json_round_trip(texture, family):
    record = {family: params(family, strength=0.7)}
    stored = json.loads(json.dumps(record))  # as the manifest keeps a test image's record
    assert torch.equal(elite.apply_degradation(texture, record), elite.apply_degradation(texture, stored))


@pytest.mark.parametrize("family", REGIONAL)
def test_a_localised_family_changes_only_pixels_inside_its_mask(texture, family):
    for seed in range(4):
        record = params(family, seed=seed, local=True)
        changed = (apply(family, texture, seed=seed, local=True) - texture).abs().amax(dim=0) > 1e-6
        mask = elite.region_mask(record["region"], 128, 128)
        assert changed.any() and not (changed & (mask == 0)).any(), (seed, record["region"])


def test_region_masks_are_soft_ellipses_whose_box_holds_their_support():
    generator = elite.generator_for("regions")
    for _ in range(20):
        region = elite.sample_region(generator, tuple(elite.FACE_ANCHORS))
        mask = elite.region_mask(region, 96, 128)
        top, bottom, left, right = elite.region_box(region, 96, 128)
        outside = torch.ones_like(mask, dtype=torch.bool)
        outside[top:bottom, left:right] = False
        assert mask.max() == 1.0 and mask.min() >= 0 and not mask[outside].any()
        assert torch.equal(elite.region_mask(region, 96, 128, (top, bottom, left, right)), mask[top:bottom, left:right])


def test_holes_draw_their_regions_from_hair_and_outline_only():
    generator = elite.generator_for("holes")
    anchors = {elite.sample_region(generator, elite.DEGRADATIONS["holes"].anchors)["anchor"] for _ in range(40)}
    assert anchors == {"hair", "outline"}


def test_holes_move_pixels_toward_the_background_colour(texture):
    record = params("holes", local=True)
    background = elite.background_colour(texture)
    inside = elite.region_mask(record["region"], 128, 128) > 0.5
    distance = lambda image: (image - background).abs().sum(dim=0)[inside].mean()  # noqa: E731
    assert distance(apply("holes", texture, local=True)) < 0.7 * distance(texture)


def high_frequency_energy_inside(image: torch.Tensor, inside: torch.Tensor) -> float:
    """high_frequency_energy over the pairs of adjacent pixels that both lie inside the (H, W) mask."""
    across, down = inside[:, 1:] & inside[:, :-1], inside[1:] & inside[:-1]
    return (((image[:, :, 1:] - image[:, :, :-1]) ** 2)[:, across].mean().item()
            + ((image[:, 1:] - image[:, :-1]) ** 2)[:, down].mean().item())


def test_blobs_smooth_away_detail_inside_their_region(texture):
    for seed in range(3):
        record = params("blobs", seed=seed, local=True)
        core = elite.region_mask(record["region"], 128, 128) == 1
        out = apply("blobs", texture, seed=seed, local=True)
        assert high_frequency_energy_inside(out, core) < 0.5 * high_frequency_energy_inside(texture, core)


def test_warp_moves_pixels_but_keeps_their_colours():
    blocks = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)).repeat_interleave(8, 1) \
        .repeat_interleave(8, 2)  # (3, 128, 128): flat 8 px tiles, so resampling mixes only at tile edges
    warped = elite.apply_degradation(blocks, {"warp": params("warp", local=True)})
    moved = (warped - blocks).abs().amax(dim=0) > 0.01
    histogram = lambda image: torch.stack([torch.histc(c, bins=16, min=0, max=1) for c in image]) / image[0].numel()
    assert moved.float().mean() > 0.005  # geometry changed somewhere ...
    assert (histogram(warped) - histogram(blocks)).abs().sum(dim=1).max() < 0.05  # ... colours did not
    recoloured = elite.apply_degradation(blocks, {"color": params("color", local=True)})
    assert (histogram(recoloured) - histogram(blocks)).abs().sum(dim=1).max() > 0.05  # a colour change would show


@pytest.mark.parametrize("family", ["blur", "resample"])
def test_softening_families_remove_high_frequencies(face, family):
    assert high_frequency_energy(apply(family, face, local=False)) < 0.6 * high_frequency_energy(face)


def test_noise_raises_residual_variance_more_in_bright_areas():
    flat = torch.full((3, 64, 64), 0.1)
    flat[:, :, 32:] = 0.8
    residual = apply("noise", flat) - flat
    assert residual.var() > 1e-3
    assert residual[:, :, 32:].std() > residual[:, :, :32].std()  # shot noise grows with the signal


def test_jpeg_makes_8x8_block_boundaries(face):
    smooth = apply("blur", face, local=False)  # blocking shows best on smooth content
    residual = (apply("jpeg", smooth) - smooth).abs().mean(dim=0)
    column_steps = (residual[:, 1:] - residual[:, :-1]).abs().mean(dim=0)  # (W - 1,)
    on_boundary = column_steps[7::8].mean()
    inside = torch.cat([column_steps[k::8] for k in range(7)]).mean()
    assert on_boundary > 1.3 * inside


def test_color_moves_channel_means_inside_its_region(texture):
    record = params("color")
    inside = elite.region_mask(record["region"], 128, 128) == 1
    shift = (apply("color", texture)[:, inside].mean(dim=1) - texture[:, inside].mean(dim=1)).abs()
    assert record["region"] is not None and shift.max() > 0.01


def test_ghost_adds_a_shifted_copy():
    image = torch.zeros(3, 64, 64)
    image[:, 28:36, 28:36] = 1.0
    out = apply("ghost", image, local=False)
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[28:36, 28:36] = False
    assert out[0][outside].max() > 0.1 and out[0][28:36, 28:36].min() < 1.0


def test_floaters_are_thin_strokes_mostly_near_the_outline(face):
    (x0, y0), (rx, ry) = elite.FACE_ANCHORS["outline"]
    ys, xs = elite.pixel_grid(128, 128)
    ring = ((xs / 128 - x0) / rx) ** 2 + ((ys / 128 - y0) / ry) ** 2
    near_outline = (ring > 0.6) & (ring < 1.5)  # a band around the outline ellipse
    changed = torch.stack([(apply("floaters", face, strength=0.3, seed=seed) - face).abs().amax(dim=0) > 0.05
                           for seed in range(20)])
    assert 0 < changed.float().mean() < 0.3
    assert changed[:, near_outline].float().mean() > 1.5 * changed[:, ~near_outline].float().mean()


def test_records_name_families_strengths_and_regions():
    config = smoke_config(blur_strength=(0.3, 0.4), jpeg_strength=(0.0, 0.0), local_probability=1.0)
    for k in range(50):
        record = elite.sample_degradation(config, elite.generator_for(1, k))
        assert record and set(record) <= set(elite.DEGRADATION_FAMILIES) - {"jpeg"}
        for family, family_params in record.items():
            scope = elite.DEGRADATIONS[family].scope
            assert (family_params["region"] is not None) == (scope in ("local", "either"))
        if "blur" in record:
            assert 0.3 <= record["blur"]["strength"] <= 0.4


def test_every_family_of_the_config_has_one_registered_function():
    assert sorted(elite.DEGRADATIONS) == sorted(elite.DEGRADATION_FAMILIES)
    assert elite.DEGRADATION_FAMILIES == ("warp", "blobs", "holes", "floaters", "ghost", "blur", "resample", "color",
                                          "noise", "jpeg")
    assert {elite.DEGRADATIONS[family].scope for family in ("noise", "jpeg")} == {"global"}


def test_records_read_as_one_line_per_family():
    region = {"anchor": "mouth", "centre": [0.5, 0.7], "radii": [0.1, 0.1], "angle": 0.0, "feather": 0.5}
    assert elite.describe_record({"blur": {"strength": 0.4213, "seed": 3, "region": region},
                                  "jpeg": {"strength": 1.0, "seed": 4, "region": None}}) == "blur 0.42 (mouth)\njpeg 1.00"
    assert elite.describe_record({elite.REAL: {}, "noise": {"strength": 0.25, "seed": 1}}) == "real\nnoise 0.25"


def test_the_family_grid_shows_every_family_at_three_strengths_and_its_region(face):
    grid = elite.family_grid(face[None].mul(2).sub(1)[0], CONFIG, seed=0)
    strip = max(14, 128 // 16)
    assert grid.size == (4 * 128, len(elite.DEGRADATION_FAMILIES) * (128 + strip))


def test_region_mask_values_follow_the_smoothstep_of_the_feathered_ellipse():
    region = {"anchor": "mouth", "centre": [0.5, 0.5], "radii": [0.25, 0.125], "angle": 0.0, "feather": 0.5}
    mask = elite.region_mask(region, 200, 200)  # radii 50 and 25 px, feather out to 1.5 radii
    row = 100  # the centre row, pixel centres at x + 0.5
    for x, distance in ((99, 0.01), (144, 0.89), (162, 1.25), (174, 1.49), (176, 1.53)):
        edge = min(1.0, max(0.0, (1.5 - distance) / 0.5))
        assert mask[row, x].item() == pytest.approx(edge * edge * (3 - 2 * edge), abs=0.02), x
    assert mask[100 + 30, 100].item() < mask[100, 100 + 30].item()  # shorter along y: 30 px is past its radius


def test_warp_moves_no_pixel_further_than_its_amplitude():
    ramp = torch.linspace(0, 1, 128).expand(3, 128, 128).clone()  # value = x / 127
    for seed in range(3):
        warped = elite.apply_degradation(ramp, {"warp": params("warp", strength=1.0, seed=seed, local=True)})
        shift_px = (warped - ramp).abs().max().item() * 127
        amplitude = 6 * 128 / 512  # the docstring's 6 px at 512², scaled to 128 px
        assert 0.3 < shift_px <= amplitude + 0.01, seed
