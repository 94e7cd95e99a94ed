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


@pytest.fixture(scope="session")
def tiny_parts(tiny_model_dir):
    """(unet, vae, scheduler, prompt embedding) of the tiny model in fp32 on the CPU, loaded like a full run."""
    cpu = torch.device("cpu")
    unet, vae, scheduler = elite.load_sd_turbo(str(tiny_model_dir), cpu, torch.float32)
    prompt = elite.encode_prompt(str(tiny_model_dir), "remove degradation", cpu, torch.float32)
    return unet, vae, scheduler, prompt


@pytest.fixture
def tiny_enhancer(tiny_model_dir):
    """A fresh LoRA'd tiny enhancer (fp32, CPU) built through the notebook's own builder."""
    torch.manual_seed(0)
    config = smoke_config()
    return elite.build_enhancer(config, torch.device("cpu"), torch.float32, str(tiny_model_dir))


@pytest.fixture(scope="session")
def real_enhancer():
    """The enhancer built from SD-Turbo's real configs with random weights (footprint mode), fp32 on the CPU."""
    return elite.build_enhancer(elite.Config(run_mode="footprint", resolution=64), torch.device("cpu"),
                                torch.float32, source=None)


@pytest.fixture(params=["tiny", pytest.param("real", marks=pytest.mark.slow)])
def any_enhancer(request):
    """The tiny smoke enhancer and the real-config one, for tests that must hold for both."""
    return request.getfixturevalue(f"{request.param}_enhancer")


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
