"""The data cell survives a network blip: the Hub's split file is fetched through its cache and retried."""
import pytest

from notebook_library import elite

def fake_hub(monkeypatch, failures: list[Exception]) -> list[tuple]:
    """list_repo_files and hf_hub_download faked: the first calls raise `failures`, then they answer."""
    calls = []

    def answer(result):
        def call(*args, **kwargs):
            calls.append((args, kwargs))
            if failures:
                raise failures.pop(0)
            return result(*args)
        return call
    monkeypatch.setattr(elite, "list_repo_files", answer(lambda repo: [
        "README.md", "data/train-00000-of-00006.parquet", "data/validation-00000-of-00001-abc.parquet"]))
    monkeypatch.setattr(elite, "hf_hub_download", answer(lambda repo, name: f"/cache/{name}"))
    monkeypatch.setattr(elite.time, "sleep", lambda seconds: calls.append(("sleep", seconds)))
    return calls

def test_transient_errors_are_retried_with_a_growing_pause(monkeypatch):
    calls = fake_hub(monkeypatch, [OSError("connection reset"), OSError("timed out")])
    assert elite.hub_split_files("mattymchen/celeba-hq", "validation") == [
        "/cache/data/validation-00000-of-00001-abc.parquet"]  # only the split's file, from the cache
    assert [call for call in calls if call[0] == "sleep"] == [("sleep", 5.0), ("sleep", 10.0)]
    download = [call for call in calls if call[0] != "sleep"][-1]
    assert download == (("mattymchen/celeba-hq", "data/validation-00000-of-00001-abc.parquet"),
                        {"repo_type": "dataset"})

def test_errors_that_waiting_cannot_fix_are_raised_at_once(monkeypatch):
    calls = fake_hub(monkeypatch, [elite.hub_errors.OfflineModeIsEnabled("offline")])
    with pytest.raises(elite.hub_errors.OfflineModeIsEnabled):
        elite.hub_split_files("mattymchen/celeba-hq", "validation")
    assert not [call for call in calls if call[0] == "sleep"]
    calls = fake_hub(monkeypatch, [OSError("down")] * 4)
    with pytest.raises(OSError, match="down"):
        elite.hub_split_files("mattymchen/celeba-hq", "validation")
    assert len([call for call in calls if call[0] == "sleep"]) == 3

def test_a_split_without_files_is_named(monkeypatch):
    fake_hub(monkeypatch, [])
    with pytest.raises(ValueError, match="no parquet files of split 'test'"):
        elite.hub_split_files("mattymchen/celeba-hq", "test")
