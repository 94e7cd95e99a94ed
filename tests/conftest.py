"""Load the notebook's `#| export` cells, in order, into one importable module named `elite`."""
import json
import linecache
import os
import sys
import types
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # any Hub call fails at once instead of retrying
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "ELITE_enhancer.ipynb"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPORT_MARK = "#| export"


def cell_sources(notebook: Path = NOTEBOOK) -> list[tuple[str, str]]:
    """(cell type, source) of every cell, in order."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [(cell["cell_type"], "".join(cell["source"])) for cell in cells]


def export_sources(notebook: Path = NOTEBOOK) -> list[str]:
    """Sources of the export cells."""
    return [source for kind, source in cell_sources(notebook) if kind == "code" and source.startswith(EXPORT_MARK)]


def load_exports() -> types.ModuleType:
    """Execute the export cells into a fresh module registered as `elite`."""
    module = types.ModuleType("elite")
    module.__file__ = str(NOTEBOOK)
    sys.modules["elite"] = module
    for index, source in enumerate(export_sources()):
        filename = f"<export cell {index}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)  # readable tracebacks
        exec(compile(source, filename, "exec"), module.__dict__)
    return module


elite = load_exports()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size models or repeated notebook runs (CI skips them in the "
                                       "Colab-versions environment)")


def smoke_config(**overrides):
    """The smoke preset as a Config, with overrides."""
    return elite.Config(**{**elite.MODE_PRESETS["smoke"], "run_mode": "smoke", **overrides})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny SD-Turbo-shaped model in the Hub layout, written once per test session."""
    return elite.write_tiny_sd_turbo(tmp_path_factory.mktemp("models") / "tiny_sd_turbo", seed=0)


@pytest.fixture(scope="session")
def tiny_parts(tiny_model_dir):
    """(unet, vae, scheduler, prompt embedding) of the tiny model in fp32 on the CPU, loaded like a full run."""
    import torch
    cpu = torch.device("cpu")
    unet, vae, scheduler = elite.load_sd_turbo(str(tiny_model_dir), cpu, torch.float32)
    prompt = elite.encode_prompt(str(tiny_model_dir), "remove degradation", cpu, torch.float32)
    return unet, vae, scheduler, prompt


@pytest.fixture
def tiny_enhancer(tiny_model_dir):
    """A fresh LoRA'd tiny enhancer (fp32, CPU) built through the notebook's own builder."""
    import torch
    torch.manual_seed(0)
    config = smoke_config()
    return elite.build_enhancer(config, torch.device("cpu"), torch.float32, str(tiny_model_dir))


def trainable_weights(checkpoint: Path) -> dict:
    """The trainable tensors stored in a checkpoint file."""
    import torch
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["trainable"]


def smoke_environ(run_dir: Path, **overrides) -> dict:
    """ELITE_* variables of a smoke run in `run_dir`, with overrides."""
    return {"ELITE_RUN_MODE": "smoke", "ELITE_RUN_DIR": str(run_dir),
            **{f"ELITE_{name.upper()}": str(value) for name, value in overrides.items()}}


@pytest.fixture(scope="session")
def notebook_kernel(tmp_path_factory):
    """One kernel for every notebook-level test, as one Colab session: each run follows the ones before it."""
    from notebook_runner import NotebookKernel
    workdir = tmp_path_factory.mktemp("kernel_workdir")
    kernel = NotebookKernel(NOTEBOOK, workdir, {**os.environ, "HF_HUB_OFFLINE": "1"})
    kernel.workdir = workdir
    yield kernel
    kernel.shutdown()


@pytest.fixture(scope="session")
def finished_run(notebook_kernel, tmp_path_factory) -> tuple[Path, str]:
    """A smoke run of the whole notebook, finished in the shared kernel: (run dir, what it printed)."""
    run_dir = tmp_path_factory.mktemp("runs") / "finished"
    finished, text = notebook_kernel.run_all(smoke_environ(run_dir))
    assert finished, text[-4000:]
    return run_dir, text
