"""run.json: what defines a run, what may change within it, and the checks made before anything is written."""
import json
import sys

import pytest
import torch

from notebook_library import elite, smoke_config


def started(tmp_path, **changes):
    run_dir = tmp_path / "run"
    return run_dir, elite.start_run(run_dir, smoke_config(**changes))


def test_a_new_run_writes_its_record_and_nothing_else(tmp_path):
    run_dir, record = started(tmp_path)
    assert [path.name for path in run_dir.iterdir()] == ["run.json"]
    assert json.loads((run_dir / "run.json").read_text()) == record
    assert record["identity"] == elite.run_identity(smoke_config()) and record["history"] == []
    assert record["identity"]["blur_strength"] == [0.1, 1.0]  # as JSON reads it back: compares equal next time


def test_every_changed_defining_field_is_named_and_nothing_is_written(tmp_path):
    run_dir, _ = started(tmp_path)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step_000002.pt").write_bytes(b"")  # training has begun under these settings
    before = (run_dir / "run.json").read_bytes()
    with pytest.raises(ValueError) as error:
        elite.start_run(run_dir, smoke_config(seed=3, blur_strength=(0.2, 0.5), unet_lora_rank=4))
    message = str(error.value)
    for change in ("seed: 0 -> 3", "blur_strength: [0.1, 1.0] -> [0.2, 0.5]", "unet_lora_rank: 8 -> 4",
                   "set run_name (or run_dir) to a new name to start a new run", "Nothing was written"):
        assert change in message
    assert (run_dir / "run.json").read_bytes() == before


def test_resume_off_refuses_an_existing_run(tmp_path):
    run_dir, _ = started(tmp_path)
    with pytest.raises(FileExistsError, match="already holds a run and resume is off"):
        elite.start_run(run_dir, smoke_config(resume=False))
    assert elite.start_run(tmp_path / "fresh", smoke_config(resume=False))["history"] == []


def test_a_folder_with_files_but_no_record_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileExistsError, match="holds no run.json"):
        elite.start_run(tmp_path, smoke_config())
    assert not (tmp_path / "run.json").exists()


def test_an_unreadable_record_is_refused(tmp_path):
    run_dir, _ = started(tmp_path)
    (run_dir / "run.json").write_text('{"format": 1, "ident')
    with pytest.raises(ValueError, match="cannot be read"):
        elite.start_run(run_dir, smoke_config())
    (run_dir / "run.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="not a run record of format 1"):
        elite.start_run(run_dir, smoke_config())


def test_free_fields_change_nothing_and_training_fields_are_recorded_from_the_resume_step(tmp_path):
    run_dir, record = started(tmp_path)
    free = smoke_config(eval_every=7, keep_checkpoints=5, num_examples=3, run_name="other")
    assert elite.start_run(run_dir, free) == record and elite.record_changes(run_dir, record, free, 4) == []
    changed = smoke_config(learning_rate=3e-5, batch_size=1)
    assert elite.start_run(run_dir, changed) == record  # applied only when training resumes
    assert elite.record_changes(run_dir, record, changed, 4) == [("batch_size", 2, 1), ("learning_rate", 1e-4, 3e-5)]
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["history"] == [{"step": 4, "field": "batch_size", "old": 2, "new": 1},
                                {"step": 4, "field": "learning_rate", "old": 1e-4, "new": 3e-5}]
    assert saved["optimisation"] == elite.optimisation_settings(changed)


def test_release_drops_the_previous_run_and_empties_the_cuda_cache(monkeypatch):
    reserved = iter([3 * 2**30, 1 * 2**30])
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: next(reserved))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    sys.last_value = KeyboardInterrupt()  # what IPython keeps after Stop
    namespace = {"enhancer": object(), "loss_fn": object(), "config": "kept"}
    assert elite.release_previous_run(namespace, ("enhancer", "loss_fn", "reloaded")) == 2.0
    assert namespace == {"config": "kept"} and emptied == [True] and not hasattr(sys, "last_value")
    assert elite.release_previous_run(namespace, ("enhancer",)) is None  # a first Run all: nothing to release


def test_input_image_problems_are_found_before_anything_runs(tmp_path):
    from PIL import Image
    strip = tmp_path / "strip.png"
    Image.new("RGB", (4000, 100)).save(strip)
    with pytest.raises(ValueError, match="4000x100, more than 4:1; crop it first"):
        elite.check_inputs(smoke_config(input_image=str(strip)))
    with pytest.raises(FileNotFoundError, match="input_image=.*does not exist"):
        elite.check_inputs(smoke_config(input_image=str(tmp_path / "missing.png")))
    fine = tmp_path / "face.png"
    Image.new("RGB", (300, 200)).save(fine)
    elite.check_inputs(smoke_config(input_image=str(fine)))


def test_a_read_only_finished_run_is_evaluated_into_a_local_folder(tmp_path, monkeypatch):
    run_dir, _ = started(tmp_path, train_steps=4)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step_000004.pt").write_bytes(b"")
    monkeypatch.setattr(elite.os, "access", lambda path, mode: path != run_dir)  # a view-only shared folder
    assert elite.output_dir_for(run_dir, smoke_config(train_steps=4), tmp_path / "runs") == tmp_path / "runs" / "run-outputs"
    with pytest.raises(PermissionError, match="read-only and its run has 4 of 6 steps.*Copy the folder"):
        elite.output_dir_for(run_dir, smoke_config(train_steps=6), tmp_path / "runs")
    monkeypatch.undo()
    assert elite.output_dir_for(run_dir, smoke_config(train_steps=6), tmp_path / "runs") == run_dir


def test_a_run_that_built_nothing_yet_restarts_with_new_defining_settings(tmp_path):
    """The data cell failed ('Only 3 usable images ... lower num_images'): following that advice must work."""
    run_dir, _ = started(tmp_path, num_images=40)
    (run_dir / elite.SYNTHETIC_SOURCE).mkdir()  # stand-ins made from the old settings
    record = elite.start_run(run_dir, smoke_config(num_images=8))
    assert record["identity"]["num_images"] == 8 and not (run_dir / elite.SYNTHETIC_SOURCE).exists()
    assert elite.read_run_record(run_dir, smoke_config(num_images=8)) == record
    (run_dir / "data").mkdir()
    (run_dir / "data" / "manifest.json").write_text("{}")  # now the data exist: the settings are tied to them
    with pytest.raises(ValueError, match="num_images: 8 -> 40"):
        elite.start_run(run_dir, smoke_config(num_images=40))


def test_a_run_started_before_the_face_regions_is_refused_naming_the_new_fields(tmp_path):
    run_dir, record = started(tmp_path)
    new_fields = ("warp_strength", "blobs_strength", "holes_strength", "local_probability", "degradations")
    record["identity"] = {name: value for name, value in record["identity"].items() if name not in new_fields}
    elite.write_json(run_dir / "run.json", record)  # as the notebook before them wrote it
    (run_dir / "data").mkdir()
    (run_dir / "data" / "manifest.json").write_text("{}")  # it had built its data
    with pytest.raises(ValueError) as error:
        elite.start_run(run_dir, smoke_config())
    for change in ("warp_strength: None -> [0.2, 1.0]", "blobs_strength: None -> [0.2, 1.0]",
                   "holes_strength: None -> [0.2, 1.0]", "local_probability: None -> 0.7",
                   f"degradations: None -> {elite.DEGRADATIONS_VERSION}", "Nothing was written"):
        assert change in str(error.value)
