"""Config checks, ELITE_* overrides and their precedence, the form cell, where runs live (Drive asked for before
anything is installed), and the no-GPU stop."""
import ast
import dataclasses
import json
from pathlib import Path
from unittest.mock import Mock

import pytest
import torch

from notebook_library import NOTEBOOK, elite, smoke_config

DEFAULTS = {field.name: field.default for field in dataclasses.fields(elite.Config)}

def problems_of(**fields) -> str:
    with pytest.raises(ValueError, match="Invalid parameters") as error:
        elite.Config(**fields)
    return str(error.value)

def test_every_problem_is_named_at_once():
    message = problems_of(run_mode="fast", resolution=100, batch_size=0, test_fraction=0.7,
                          blur_strength=(0.8, 0.2), lr_schedule="steep")
    assert all(named in message for named in ("run_mode='fast'", "resolution=100", "batch_size=0",
                                              "test_fraction=0.7", "blur_strength=(0.8, 0.2)", "lr_schedule='steep'"))
    assert message.count("\n- ") == 6

def test_wrong_types_are_named():
    message = problems_of(train_steps="100", use_unet=1, blur_strength=(0.1,), seed=1.0)
    assert all(f"{named}: expected" in message for named in ("train_steps='100'", "use_unet=1", "seed=1.0",
                                                              "blur_strength=(0.1,)"))
    assert elite.Config(grad_clip=1).grad_clip == 1  # an int is a fine float

@pytest.mark.parametrize("fields, named", [
    ({"resolution": 68}, "resolution=68: a multiple of 8"),
    ({"resolution": 56}, "resolution=56"), ({"test_fraction": 0.0}, "test_fraction=0.0"),
    ({"test_fraction": 0.6}, "test_fraction=0.6"), ({"seed": -1}, "seed=-1"),
    ({"l1_weight": 0.0, "lpips_weight": 0, "gram_weight": 0.0}, "all 0"),
    ({f"{family}_strength": (0.0, 0.0) for family in elite.DEGRADATION_FAMILIES}, "every degradation family is off"),
    ({"num_images": 10}, "num_images=10: too few"), ({"num_images": 20, "val_size": 17}, "num_images=20: too few"),
    ({"noise_strength": (0.5, 1.5)}, "noise_strength=(0.5, 1.5)"), ({"jpeg_strength": (-0.1, 0.5)}, "jpeg_strength"),
    ({"learning_rate": float("nan")}, "learning_rate=nan"), ({"learning_rate": 1.0}, "learning_rate=1.0"),
    ({"timestep": 1000}, "timestep=1000"), ({"family_probability": 1.5}, "family_probability=1.5"),
    ({"keep_checkpoints": 0}, "keep_checkpoints=0"), ({"train_seed": -2}, "train_seed=-2")])
def test_values_that_would_break_later_are_refused_now(fields, named):
    assert named in problems_of(**fields)

def test_overrides_are_python_literals_of_the_field_types():
    environ = {"ELITE_TRAIN_STEPS": "8", "ELITE_LEARNING_RATE": "3e-5", "ELITE_USE_UNET": "False",
               "ELITE_SKIP_CONNECTIONS": "True", "ELITE_RUN_DIR": "/d", "ELITE_RUN_NAME": "8",
               "ELITE_BLUR_STRENGTH": "0.2,0.8", "PATH": "/bin"}
    config, overrides = elite.build_config({}, environ)
    assert overrides == {"train_steps": 8, "learning_rate": 3e-5, "use_unet": False, "run_dir": "/d",
                         "skip_connections": True, "run_name": "8", "blur_strength": (0.2, 0.8)}
    assert all(type(getattr(config, name)) is type(DEFAULTS[name]) for name in overrides)
    assert elite.parse_field("7", 1.0, "X") == 7  # an int stands for a float

@pytest.mark.parametrize("name, text", [("ELITE_TRAIN_STEPS", "many"), ("ELITE_TRAIN_STEPS", "8.5"),
                                        ("ELITE_USE_UNET", "yes"), ("ELITE_BLUR_STRENGTH", "0.5"),
                                        ("ELITE_BLUR_STRENGTH", "0.1,0.2,0.3"), ("ELITE_LEARNING_RATE", "fast")])
def test_a_bad_override_names_the_variable(name, text):
    with pytest.raises(ValueError, match=f"{name}={text!r}"):
        elite.build_config({}, {name: text})

def test_an_unknown_elite_name_is_refused():
    with pytest.raises(ValueError, match="ELITE_TRAIN_STEP'"):
        elite.build_config({}, {"ELITE_TRAIN_STEP": "3"})

def test_precedence_form_then_preset_then_environment():
    form = {"run_mode": "full", "train_steps": 1500, "seed": 7, "resolution": 256}
    config, overrides = elite.build_config(form, {"ELITE_RUN_MODE": "smoke", "ELITE_BATCH_SIZE": "3"})
    assert overrides == {"run_mode": "smoke", "batch_size": 3} and config.run_mode == "smoke"
    assert (config.train_steps, config.resolution) == (4, 64)  # the preset beats the form
    assert config.batch_size == 3 and config.seed == 7  # the environment beats the preset; the form stays elsewhere
    assert elite.build_config({**form, "run_mode": "smoke"}, {"ELITE_RESOLUTION": "128"})[0].resolution == 128
    assert elite.build_config(form, {})[0].train_steps == 1500  # full has no preset

def test_the_form_cell_assigns_exactly_the_form_fields_with_the_config_defaults():
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    (cell,) = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).startswith(
        "# @title Run parameters")]
    body = ast.parse("".join(cell["source"])).body
    assert tuple(node.targets[0].id for node in body) == elite.FORM_FIELDS
    assert {node.targets[0].id: ast.literal_eval(node.value) for node in body} == {
        name: DEFAULTS[name] for name in elite.FORM_FIELDS}
    assert "parameters" in cell["metadata"].get("tags", [])

def test_colab_checks_the_gpu_then_mounts_drive_and_a_failed_mount_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mount = Mock(side_effect=OSError("mount failed: timeout"))
    with pytest.raises(RuntimeError, match=r"timeout.*Nothing was written. Tick local_disk in the form \(section 1\) "
                                           r"and Run all again, or run this cell again and allow access"):
        elite.colab_runs_root("full", False, True, mount)
    mount.assert_called_once_with("/content/drive")
    mount.reset_mock()
    with pytest.raises(RuntimeError, match="T4 GPU"):  # no GPU: stopped before Drive's consent is asked for
        elite.colab_runs_root("full", False, False, mount)
    assert elite.colab_runs_root("smoke", False, False, mounted := Mock()) == elite.DRIVE_RUNS and mounted.called
    with pytest.warns(UserWarning, match="local_disk"):
        assert elite.colab_runs_root("full", True, True, mount) == Path("/content/runs")
    mount.assert_not_called()
    assert list(tmp_path.iterdir()) == []

def test_a_full_run_on_a_cpu_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)T4 GPU.*smoke"):
        elite.open_run(elite.Config(), torch.device("cpu"), tmp_path)
    with pytest.raises(RuntimeError, match="T4 GPU"):
        elite.open_run(elite.Config(run_dir=str(tmp_path / "run")), torch.device("cpu"), tmp_path)
    assert list(tmp_path.iterdir()) == []
    run_dir, record = elite.open_run(smoke_config(), torch.device("cpu"), tmp_path)  # smoke is fine on a CPU
    assert run_dir == tmp_path / "sd-turbo-enhancer-smoke" and (run_dir / "run.json").exists()
    assert record["config"]["run_mode"] == "smoke"
