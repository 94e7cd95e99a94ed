"""The notebook's `#| export` cells, executed in order into one module named `elite`, and what tests share:
`from notebook_library import elite, smoke_config`."""
import json
import linecache
import os
import sys
import types
from pathlib import Path

import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # any Hub call fails at once instead of retrying
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "ELITE_enhancer.ipynb"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

def cell_sources(notebook: Path = NOTEBOOK) -> list[tuple[str, str]]:
    """(cell type, source) of every cell, in order."""
    return [(cell["cell_type"], "".join(cell["source"]))
            for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]]

def load_exports() -> types.ModuleType:
    """Execute the export cells into a fresh module registered as `elite`."""
    module = types.ModuleType("elite")
    module.__file__ = str(NOTEBOOK)
    sys.modules["elite"] = module
    exports = [source for kind, source in cell_sources() if kind == "code" and source.startswith("#| export")]
    for index, source in enumerate(exports):
        filename = f"<export cell {index}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)
    return module


elite = load_exports()

def smoke_config(**overrides):
    """The smoke preset as a Config, with overrides."""
    return elite.Config(**{**elite.MODE_PRESETS["smoke"], "run_mode": "smoke", **overrides})

def smoke_environ(run_dir: Path, **overrides) -> dict:
    """ELITE_* variables of a smoke run in `run_dir`, with overrides."""
    return {"ELITE_RUN_MODE": "smoke", "ELITE_RUN_DIR": str(run_dir),
            **{f"ELITE_{name.upper()}": str(value) for name, value in overrides.items()}}

def checkpoint_weights(path: Path) -> dict:
    """The trainable tensors stored in a checkpoint file."""
    return torch.load(path, map_location="cpu", weights_only=True)["trainable"]

def same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoint files hold bit-identical trainable tensors."""
    x, y = checkpoint_weights(a), checkpoint_weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[name], y[name]) for name in x)

def random_images(seed: int, count: int = 2, size: int = 32) -> torch.Tensor:
    """(count, 3, size, size) uniform in [-1, 1], the same for the same seed."""
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1

class HalfActivations(torch.nn.Module):
    """One trainable layer whose output is fp16, as autocast leaves activations on a T4: gradients pass through it."""

    def __init__(self):
        super().__init__()
        self.skip_convs = torch.nn.Conv2d(3, 3, 1)  # a name in a trainable group

    def forward(self, degraded):
        return self.skip_convs(degraded).half()
