"""The data cell fetches only the split's parquet files, through the Hub's cache, where a re-run finds them."""
import pytest

from notebook_library import elite

def fake_hub(monkeypatch) -> list[tuple]:
    """list_repo_files and hf_hub_download faked; the log of the downloads asked for."""
    downloads = []
    monkeypatch.setattr(elite, "list_repo_files", lambda repo, **kwargs: [
        "README.md", "data/train-00000-of-00006.parquet", "data/validation-00000-of-00001-abc.parquet"])
    monkeypatch.setattr(elite, "hf_hub_download", lambda *args, **kwargs: downloads.append((args, kwargs))
                        or f"/cache/{args[1]}")
    return downloads

def test_only_the_split_is_downloaded_through_the_cache(monkeypatch):
    downloads = fake_hub(monkeypatch)
    assert elite.hub_split_files("mattymchen/celeba-hq", "validation") == [
        "/cache/data/validation-00000-of-00001-abc.parquet"]
    assert downloads == [(("mattymchen/celeba-hq", "data/validation-00000-of-00001-abc.parquet"),
                          {"repo_type": "dataset"})]

def test_a_split_without_files_is_named(monkeypatch):
    fake_hub(monkeypatch)
    with pytest.raises(ValueError, match="no parquet files of split 'test'"):
        elite.hub_split_files("mattymchen/celeba-hq", "test")
