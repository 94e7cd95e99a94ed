"""The notebook's install cell and requirements.txt ask for the same packages; Colab's own stay untouched."""
import ast
import contextlib
import importlib.metadata
import io
import re
import subprocess
import sys
import types

import pytest
from packaging.requirements import Requirement

from notebook_library import ROOT, cell_sources

COLAB_OWNED = {"torch", "torchvision", "ipywidgets"}  # the install cell must never touch these
TEST_TOOLS = {"ipykernel", "nbclient", "nbformat", "papermill", "pytest"}


def install_cell_requirements() -> dict:
    source = next(src for kind, src in cell_sources() if kind == "code" and "NOTEBOOK_REQUIREMENTS" in src)
    assignment = next(node for node in ast.parse(source).body
                      if isinstance(node, ast.Assign) and node.targets[0].id == "NOTEBOOK_REQUIREMENTS")
    return ast.literal_eval(assignment.value)


def requirements_file() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return {re.split(r"[<>=!~ ]", line)[0]: line for line in lines if line}


def test_install_cell_matches_requirements_txt():
    in_file = requirements_file()
    runtime = {name: spec for name, spec in in_file.items() if name not in COLAB_OWNED | TEST_TOOLS}
    assert sorted(install_cell_requirements().values()) == sorted(runtime.values())


def test_install_cell_never_touches_colab_owned_packages():
    requested = {re.split(r"[<>=!~ ]", spec)[0] for spec in install_cell_requirements().values()}
    assert not requested & COLAB_OWNED


# The torch APIs the notebook calls that came late, with the release that brought them (PyTorch's release notes;
# torch.OutOfMemoryError is device-agnostic from 2.5). requirements.txt's lower bound must cover all of them.
TORCH_API_SINCE = {"torch.OutOfMemoryError": (2, 5), "torch.amp.is_autocast_available": (2, 4),
                   "torch.amp.GradScaler": (2, 3), "torch.utils.flop_counter.FlopCounterMode": (2, 1)}
INSTALL_CELL = next(src for kind, src in cell_sources() if kind == "code" and "NOTEBOOK_REQUIREMENTS" in src)


def dotted_names(source: str) -> set[str]:
    """Every dotted attribute chain in a cell, like 'torch.amp.GradScaler'."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and parts:
            chain = [node.id, *reversed(parts)]
            names |= {".".join(chain[:k]) for k in range(2, len(chain) + 1)}
    return names


def test_the_torch_lower_bound_covers_every_late_torch_api_the_notebook_uses():
    used = set().union(*(dotted_names(src) for kind, src in cell_sources() if kind == "code"))
    needed = [since for api, since in TORCH_API_SINCE.items() if api in used]
    assert "torch.OutOfMemoryError" in used and needed  # the table is about code that exists
    bound = re.search(r"torch>=(\d+)\.(\d+)", requirements_file()["torch"])
    assert (int(bound.group(1)), int(bound.group(2))) >= max(needed)


class Installed:
    """A fake importlib.metadata.version: the versions given, PackageNotFoundError for the rest."""

    def __init__(self, versions: dict[str, str]):
        self.versions = versions

    def __call__(self, name: str) -> str:
        if name not in self.versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return self.versions[name]


def in_range() -> dict[str, str]:
    """A version inside every requirement's range: its lower bound."""
    return {Requirement(spec).name: next(s.version for s in Requirement(spec).specifier if s.operator == ">=")
            for spec in install_cell_requirements().values()}


def run_install_cell(monkeypatch, versions: dict[str, str], colab: bool) -> tuple[list, str]:
    """Execute the install cell with faked versions, a faked pip and (optionally) a faked Colab: (pip calls, output)."""
    calls = []
    monkeypatch.setattr(importlib.metadata, "version", Installed(versions))
    monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(INSTALL_CELL, "<install cell>", "exec"), {})
    return calls, output.getvalue()


def test_in_range_packages_are_left_alone(monkeypatch):
    calls, output = run_install_cell(monkeypatch, in_range(), colab=True)
    assert calls == [] and "in its tested range" in output


def test_an_old_imported_package_is_upgraded_with_its_reason_then_a_restart_is_asked_for(monkeypatch):
    with pytest.raises(RuntimeError, match=r"\['diffusers'\] were upgraded after Python had imported them.*Restart "
                                           "the runtime"):
        run_install_cell(monkeypatch, in_range() | {"diffusers": "0.30.0"}, colab=True)  # no AutoencoderKL adapters
    assert sys.modules.get("diffusers") is not None  # the test process has imported it, like a Colab kernel


def test_a_missing_package_is_installed_and_needs_no_restart(monkeypatch):
    monkeypatch.delitem(sys.modules, "lpips", raising=False)  # not imported yet in this "session"
    versions = {name: version for name, version in in_range().items() if name != "lpips"}
    calls, output = run_install_cell(monkeypatch, versions, colab=True)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "lpips>=0.1.4,<0.2"]]
    assert "Installing, because lpips is missing" in output and "Installed ['lpips']" in output


def test_outside_colab_nothing_is_installed_and_the_command_is_named(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"diffusers 0.30.0 is outside the tested range.*pip install -r "
                                                  "requirements.txt"):
        run_install_cell(monkeypatch, in_range() | {"diffusers": "0.30.0"}, colab=False)
