"""Each degradation family does what it claims, where it claims: shape, range, reproducibility, locality, physics."""
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from notebook_library import elite, smoke_config

CONFIG = smoke_config()
REGIONAL = [family for family in elite.DEGRADATION_FAMILIES if elite.DEGRADATIONS[family].scope in ("local", "either")]

def smooth_texture(cells: int, mode: str = "bilinear") -> torch.Tensor:
    """Random colours on a cells x cells grid interpolated to (3, 128, 128) in [0, 1]: detail everywhere."""
    noise = torch.rand(1, 3, cells, cells, generator=torch.Generator().manual_seed(cells))
    return F.interpolate(noise, size=(128, 128), mode=mode, align_corners=False)[0].clamp(0, 1)

FACE = torch.from_numpy(np.array(elite.synthetic_face(random.Random(0), 128))).permute(2, 0, 1).float() / 255
TEXTURE = smooth_texture(32)

def params(family: str, strength: float = 0.8, seed: int = 3, local: bool | None = None) -> dict:
    return elite.family_parameters(CONFIG, family, strength, elite.generator_for("test", family, seed), local=local)

def apply(family: str, image: torch.Tensor, strength: float = 0.8, seed: int = 3, local: bool | None = None):
    return elite.apply_degradation(image, {family: params(family, strength, seed, local)})

def high_band_energy(image: torch.Tensor) -> float:
    """Spectral energy above half the Nyquist frequency along either axis."""
    spectrum, frequencies = torch.fft.fft2(image - image.mean()), torch.fft.fftfreq(image.shape[-1]).abs()
    high = (frequencies[:, None] > 0.25) | (frequencies[None, :] > 0.25)
    return (spectrum.abs() ** 2)[:, high].sum().item()

@pytest.mark.parametrize("family", elite.DEGRADATION_FAMILIES)
def test_shape_dtype_range_and_change(family):
    out = apply(family, TEXTURE)
    assert out.shape == TEXTURE.shape and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert (out - TEXTURE).abs().max() > 0.01

@pytest.mark.parametrize("family", elite.DEGRADATION_FAMILIES)
def test_strength_zero_is_identity(family):
    assert torch.equal(apply(family, FACE, strength=0.0), FACE)

@pytest.mark.parametrize("family", elite.DEGRADATION_FAMILIES)
def test_the_same_record_gives_the_same_image_also_after_a_json_round_trip(family):
    record = {family: params(family, strength=0.7)}
    stored = json.loads(json.dumps(record))  # as the manifest keeps a held-out image's record
    first = elite.apply_degradation(TEXTURE, record)
    assert torch.equal(first, elite.apply_degradation(TEXTURE, record)) and torch.equal(
        first, elite.apply_degradation(TEXTURE, stored))

@pytest.mark.parametrize("family", REGIONAL)
def test_a_local_family_changes_only_pixels_inside_its_mask_support(family):
    for seed in range(3):
        region = params(family, seed=seed, local=True)["region"]
        changed = (apply(family, TEXTURE, seed=seed, local=True) - TEXTURE).abs().amax(dim=0) > 0
        assert changed.any() and not (changed & (elite.region_mask(region, 128, 128) == 0)).any(), (seed, region)

@pytest.mark.parametrize("angle", [0.0, math.pi / 2, 0.6])
def test_region_mask_is_the_smoothstep_of_the_feathered_ellipse(angle):
    region = {"anchor": "mouth", "centre": [0.45, 0.55], "radii": [0.25, 0.125], "angle": angle, "feather": 0.5}
    mask = elite.region_mask(region, 100, 120)  # (height, width): the radii scale with the shorter side, 25, 12.5 px
    for row, col in [(55, 54), (55, 70), (55, 80), (40, 54), (62, 75), (70, 40), (20, 20), (90, 110)]:
        x, y = col + 0.5 - 0.45 * 120, row + 0.5 - 0.55 * 100
        along = (x * math.cos(angle) + y * math.sin(angle)) / 25
        across = (-x * math.sin(angle) + y * math.cos(angle)) / 12.5
        edge = min(1.0, max(0.0, (1.5 - math.hypot(along, across)) / 0.5))
        assert mask[row, col].item() == pytest.approx(edge * edge * (3 - 2 * edge), abs=1e-4), (row, col)
    assert mask.max() == 1 and mask.min() == 0

@pytest.mark.parametrize("family", ["blur", "resample"])
def test_softening_families_remove_high_frequencies(family):
    assert high_band_energy(apply(family, FACE, local=False)) < 0.5 * high_band_energy(FACE)

def test_noise_raises_residual_variance_more_in_bright_areas():
    flat = torch.cat([torch.full((3, 64, 32), 0.3), torch.full((3, 64, 32), 0.8)], dim=2)
    residual = apply("noise", flat, strength=0.8) - flat
    for half, level in ((residual[:, :, :32], 0.3), (residual[:, :, 32:], 0.8)):
        expected = math.sqrt((0.05 * 0.8) ** 2 + (0.08 * 0.8) ** 2 * level)  # read and shot noise
        assert half.std().item() == pytest.approx(expected, rel=0.06)
    assert residual[:, :, 32:].var() > 1.4 * residual[:, :, :32].var()

def test_jpeg_makes_8x8_block_boundaries():
    def boundary_contrast(image: torch.Tensor) -> list[float]:  # steps across block edges / inside, along x, y
        steps = [(image[:, :, 1:] - image[:, :, :-1]).abs().mean(dim=(0, 1)),
                 (image[:, 1:] - image[:, :-1]).abs().mean(dim=(0, 2))]
        return [(step[7::8].mean() / torch.cat([step[k::8] for k in range(7)]).mean()).item() for step in steps]
    smooth = smooth_texture(8, "bicubic")  # blocking shows on smooth content
    assert max(boundary_contrast(smooth)) < 1.1 and min(boundary_contrast(apply("jpeg", smooth, strength=1.0))) > 1.6

def test_holes_move_pixels_toward_the_background_colour():
    image, background = TEXTURE.clone(), torch.tensor([0.9, 0.85, 0.8])[:, None, None]
    image[:, :16] = background  # the top band, where an aligned portrait shows its background
    for seed in range(3):
        out = apply("holes", image, seed=seed, local=True)
        before, after = (image - background).abs(), (out - background).abs()
        assert (after <= before + 1e-6).all()  # every pixel moves toward the background, none away
        assert (before - after).sum() > 10, seed  # ... and many move

def test_warp_keeps_colours_and_moves_no_pixel_further_than_its_amplitude():
    x = torch.linspace(0, 1, 128).expand(128, 128)
    ramps = torch.stack([x, x.T, torch.full_like(x, 0.4)])  # x / 127, y / 127 and a constant
    amplitude = 6 * 0.8 * 128 / 512  # px
    for seed in range(3):
        warped = apply("warp", ramps, seed=seed, local=False)
        shift = (warped[:2] - ramps[:2]).abs().amax(dim=(1, 2)) * 127  # px along x and y
        assert shift.max() <= amplitude + 1e-3 and shift.max() > 0.5 * amplitude, (seed, shift)
        assert (warped[2] - 0.4).abs().max() < 1e-5  # a flat colour stays that colour
    blocks = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)).repeat_interleave(8, 1) \
        .repeat_interleave(8, 2)  # flat 8 px tiles: a warp only mixes neighbours within its reach
    warped, reach = apply("warp", blocks, local=False), 2 * math.ceil(amplitude) + 1
    assert (warped <= F.max_pool2d(blocks[None], reach, 1, reach // 2)[0] + 1e-6).all()
    assert (warped >= -F.max_pool2d(-blocks[None], reach, 1, reach // 2)[0] - 1e-6).all()

def test_records_name_families_with_strengths_in_their_configured_range():
    config = smoke_config(blur_strength=(0.3, 0.4), noise_strength=(0.6, 0.6), jpeg_strength=(0.0, 0.0))
    seen = set()
    for k in range(60):
        record = elite.sample_degradation(config, elite.generator_for("records", k))
        assert record and set(record) <= set(elite.enabled_families(config)) and "jpeg" not in record
        for family, family_params in record.items():
            low, high = getattr(config, f"{family}_strength")
            assert low <= family_params["strength"] <= high and isinstance(family_params["seed"], int)
            assert family_params["region"] is None or elite.DEGRADATIONS[family].scope in ("local", "either")
        seen |= set(record)
    assert seen == set(elite.DEGRADATION_FAMILIES) - {"jpeg"}
