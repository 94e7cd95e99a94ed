"""The install cell asks for requirements.txt's runtime packages, never Colab's own, and installs only in Colab."""
import ast
import importlib.metadata
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from notebook_library import ROOT, cell_sources

COLAB_OWNED = {"torch", "torchvision", "ipywidgets"}  # matched to Colab's CUDA and widget frontend
INSTALL_CELL = next(source for kind, source in cell_sources() if kind == "code" and "NOTEBOOK_REQUIREMENTS" in source)
REQUIREMENTS = ast.literal_eval(next(node.value for node in ast.parse(INSTALL_CELL).body if isinstance(
    node, ast.Assign) and getattr(node.targets[0], "id", "") == "NOTEBOOK_REQUIREMENTS"))

def test_the_install_cell_asks_for_requirements_txt_runtime_lines_minus_colabs_own():
    runtime = (ROOT / "requirements.txt").read_text().split("\n\n")[0]  # the first block; test tools follow
    lines = [line.split("#")[0].strip() for line in runtime.splitlines()]
    specs = [line for line in lines if line and Requirement(line).name not in COLAB_OWNED]
    assert sorted(REQUIREMENTS) == sorted(specs) and len([line for line in lines if line]) - len(specs) == 3

def run_install_cell(monkeypatch, versions: dict[str, str], colab: bool, calls=None) -> tuple[list, str]:
    """Execute the cell with faked installed versions, pip and (optionally) Colab: (pip commands, printed)."""
    def version(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]
    calls, printed = [] if calls is None else calls, []
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: calls.append(command))
    exec(compile(INSTALL_CELL, "<install cell>", "exec"), {"print": lambda *args, **kw: printed.append(args),
                                                           "IN_COLAB": colab})  # set by the cell before it
    return calls, " ".join(str(part) for args in printed for part in args)

def lower_bounds() -> dict[str, str]:  # a version inside every requirement's range
    return {Requirement(spec).name: next(s.version for s in Requirement(spec).specifier if s.operator == ">=")
            for spec in REQUIREMENTS}

@pytest.mark.parametrize("colab", [False, True])
def test_packages_in_their_range_are_left_alone(monkeypatch, colab):
    calls, printed = run_install_cell(monkeypatch, lower_bounds(), colab)
    assert calls == [] and "in its tested range" in printed

def test_outside_colab_a_missing_package_names_the_pip_command_and_installs_nothing(monkeypatch):
    calls, versions = [], {name: v for name, v in lower_bounds().items() if name != "lpips"}
    with pytest.raises(ModuleNotFoundError, match=r"lpips is missing.*pip install -r requirements.txt"):
        run_install_cell(monkeypatch, versions, colab=False, calls=calls)
    assert calls == []

def test_in_colab_a_missing_package_is_installed_with_its_requirement(monkeypatch):
    monkeypatch.delitem(sys.modules, "lpips", raising=False)  # not imported yet in this session
    versions, spec = lower_bounds(), next(spec for spec in REQUIREMENTS if Requirement(spec).name == "lpips")
    calls, printed = run_install_cell(monkeypatch, {n: v for n, v in versions.items() if n != "lpips"}, True)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", spec]] and "lpips is missing" in printed

def test_in_colab_an_outdated_package_already_imported_is_upgraded_then_a_restart_is_asked_for(monkeypatch):
    calls, spec = [], next(spec for spec in REQUIREMENTS if Requirement(spec).name == "diffusers")
    with pytest.raises(RuntimeError, match=r"diffusers.*upgraded.*Restart session"):
        run_install_cell(monkeypatch, lower_bounds() | {"diffusers": "0.30.0"}, colab=True, calls=calls)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", spec]] and "diffusers" in sys.modules  # imported
