"""The notebook's install cell and requirements.txt ask for the same packages; Colab's own stay untouched."""
import ast
import re

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
