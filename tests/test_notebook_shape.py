"""The notebook reads as a short book: the method in front, the machinery collapsed as Colab collapses sections,
enough prose, sections numbered from 1, short visible cells (figures from tests/notebook_shape.py)."""
import json
import re
import subprocess
import sys
from pathlib import Path

from notebook_library import EXPORT_MARK, NOTEBOOK
from notebook_shape import collapsed_cells, heading, shape

NOTEBOOK_JSON = json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def test_the_reading_goals_hold():
    figures = shape(NOTEBOOK, NOTEBOOK)
    assert figures["markdown_share"] >= 0.15
    assert figures["first_model_code_visible"] <= 0.36  # "within the first ~35 %" of what a reader sees
    assert figures["method_share_of_visible_code"] >= 2 / 3
    assert figures["section_numbers"] == list(range(1, len(figures["section_numbers"]) + 1))
    assert figures["visible_cells_over_40_lines"] == 0


def test_the_machinery_is_one_collapsed_section_of_definitions_in_colab_and_jupyter_terms():
    ids = NOTEBOOK_JSON["metadata"]["colab"]["collapsed_sections"]
    headings = {cell["metadata"].get("id"): cell for cell in NOTEBOOK_JSON["cells"] if heading(cell)}
    assert ids == ["machinery"] and headings["machinery"]["metadata"]["jp-MarkdownHeadingCollapsed"] is True
    assert heading(headings["machinery"])[1].startswith("Machinery")
    hidden = [NOTEBOOK_JSON["cells"][i] for i in sorted(collapsed_cells(NOTEBOOK_JSON))]
    code = ["".join(cell["source"]) for cell in hidden if cell["cell_type"] == "code"]
    assert len(code) > 20 and all(source.startswith(EXPORT_MARK) for source in code)  # definitions only
    assert all(heading(cell) and heading(cell)[0] == 4 for cell in hidden if cell["cell_type"] == "markdown")


def test_form_cells_hide_their_code_as_colab_saves_them():
    forms = [cell for cell in NOTEBOOK_JSON["cells"] if cell["cell_type"] == "code"
             and re.match(r"# @title .*\{ display-mode: \"form\" \}", "".join(cell["source"]))]
    assert len(forms) >= 5 and all(cell["metadata"].get("cellView") == "form" for cell in forms)


def test_the_first_cell_needs_nothing_fixed_to_work_locally():
    title = "".join(NOTEBOOK_JSON["cells"][0]["source"])
    assert title.startswith("# ") and "OWNER" not in title and "colab.research.google.com" not in title


def test_the_figures_script_runs_on_its_own():
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("notebook_shape.py"))], capture_output=True,
                            text=True, check=True)
    assert "first_model_code_visible" in result.stdout and "method_share_of_visible_code" in result.stdout
