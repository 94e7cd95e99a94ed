"""Fixtures shared by the tests; the notebook's library itself is tests/notebook_library.py."""
import os
from pathlib import Path

import pytest
import torch

from notebook_library import NOTEBOOK, elite, smoke_config, smoke_environ

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size models or repeated notebook runs (CI skips them in the "
                                       "Colab-versions environment)")

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny SD-Turbo-shaped model in the Hub layout, written once per test session."""
    return elite.write_tiny_sd_turbo(tmp_path_factory.mktemp("models") / "tiny_sd_turbo", seed=0)

@pytest.fixture
def tiny_enhancer(tiny_model_dir):
    """A fresh LoRA'd tiny enhancer (fp32, CPU) built through the notebook's own builder and loading path."""
    return elite.build_enhancer(smoke_config(), torch.device("cpu"), torch.float32, str(tiny_model_dir))

@pytest.fixture(scope="session")
def real_enhancer():
    """SD-Turbo's real architecture on the meta device (shapes, no memory): for its modules and parameter sets."""
    from gpu_check import random_enhancer
    with torch.device("meta"):
        return random_enhancer(elite.Config(resolution=64), torch.device("meta"), torch.float32)

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
