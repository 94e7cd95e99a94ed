"""How the notebook reads: python tests/notebook_shape.py [NOTEBOOK [REFERENCE]]

Prints the figures a reader feels, for the whole notebook (raw lines) and for what Colab shows by default (the
visible notebook: a collapsed section shows only its heading, a form cell only its title and fields):
- the markdown share of all lines;
- where the first Model code comes, as a share of the visible lines before it (and of the raw lines);
- how much of the visible code is the method: code of the sections from Data on, leaving out every definition
  that REFERENCE (default: this repository's notebook) keeps in its collapsed machinery, so that an older notebook
  without a collapsed section is measured by the same division;
- the section numbers, and the longest visible cell.
tests/test_notebook_shape.py holds the notebook to its goals."""
import ast
import json
import re
import sys
from pathlib import Path

STORY_SECTIONS = ("Data", "Model", "Losses", "Training", "Evaluation", "Use it")  # the method, in order
FORM_LINE = re.compile(r"^\s*#\s*@(title|markdown)|#\s*@param")


def heading(cell: dict) -> tuple[int, str] | None:
    """(level, title) of a markdown cell that opens with a heading."""
    match = re.match(r"^(#+)\s+(.*)", "".join(cell["source"])) if cell["cell_type"] == "markdown" else None
    return (len(match.group(1)), match.group(2).strip()) if match else None


def collapsed_cells(notebook: dict) -> set[int]:
    """Indices of the cells Colab hides under the headings listed in metadata.colab.collapsed_sections."""
    ids = set(notebook["metadata"].get("colab", {}).get("collapsed_sections", []))
    hidden, level = set(), None
    for index, cell in enumerate(notebook["cells"]):
        opened = heading(cell)
        if level is not None and opened and opened[0] <= level:
            level = None
        if level is not None:
            hidden.add(index)
        elif opened and cell.get("metadata", {}).get("id") in ids:
            level = opened[0]
    return hidden


def shown_lines(cell: dict, hidden: bool) -> int:
    """Lines Colab shows by default: none under a collapsed heading, a form cell's title and fields, all else."""
    lines = "".join(cell["source"]).splitlines()
    if hidden:
        return 0
    if cell["cell_type"] == "code" and cell.get("metadata", {}).get("cellView") == "form":
        return sum(bool(FORM_LINE.search(line)) for line in lines)
    return len(lines)


def top_level_nodes(source: str) -> list[tuple[set[str], int]]:
    """(names it defines, lines it spans) of each top-level statement of a code cell that parses."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with ! or % lines
        return []
    nodes = []
    for node in tree.body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        names = {node.name} if hasattr(node, "name") else {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                                                            and isinstance(n.ctx, ast.Store)}
        nodes.append((names, node.end_lineno - start + 1))
    return nodes


def machinery_names(notebook: dict) -> set[str]:
    """Every name defined at the top level of the notebook's collapsed cells."""
    hidden = collapsed_cells(notebook)
    return {name for index, cell in enumerate(notebook["cells"]) if index in hidden and cell["cell_type"] == "code"
            for names, _ in top_level_nodes("".join(cell["source"])) for name in names}


def method_lines(cell: dict, machinery: set[str]) -> int:
    """Lines of a code cell's top-level statements that define nothing the reference keeps as machinery."""
    return sum(lines for names, lines in top_level_nodes("".join(cell["source"])) if not names & machinery)


def shape(path: Path, reference: Path) -> dict:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    machinery = machinery_names(json.loads(reference.read_text(encoding="utf-8")))
    hidden = collapsed_cells(notebook)
    section, rows = "", []
    for index, cell in enumerate(notebook["cells"]):
        opened = heading(cell)
        if opened and opened[0] == 2:
            section = re.sub(r"^\d+\.\s*", "", opened[1])
        raw = len("".join(cell["source"]).splitlines())
        code_shown = cell["cell_type"] == "code" and cell.get("metadata", {}).get("cellView") != "form"
        rows.append({"index": index, "kind": cell["cell_type"], "section": section, "raw": raw,
                     "shown": shown_lines(cell, index in hidden), "code_shown": code_shown and index not in hidden,
                     "method": method_lines(cell, machinery) if cell["cell_type"] == "code" else 0})
    total_raw, total_shown = sum(r["raw"] for r in rows), sum(r["shown"] for r in rows)
    model = next(i for i, r in enumerate(rows) if r["section"] == "Model" and r["kind"] == "code")
    visible_code = [r for r in rows if r["code_shown"]]
    numbers = [int(m.group(1)) for cell in notebook["cells"] if (h := heading(cell)) and h[0] == 2
               and (m := re.match(r"(\d+)\.", h[1]))]
    longest = max(visible_code, key=lambda r: r["raw"])
    return {
        "lines": total_raw, "markdown_share": sum(r["raw"] for r in rows if r["kind"] == "markdown") / total_raw,
        "first_model_code_raw": sum(r["raw"] for r in rows[:model]) / total_raw,
        "visible_lines": total_shown, "first_model_code_visible": sum(r["shown"] for r in rows[:model]) / total_shown,
        "visible_code_lines": sum(r["raw"] for r in visible_code),
        "method_share_of_visible_code": sum(r["method"] for r in visible_code if r["section"] in STORY_SECTIONS)
        / sum(r["raw"] for r in visible_code),
        "section_numbers": numbers, "longest_visible_cell": {"index": longest["index"], "lines": longest["raw"]},
        "visible_cells_over_40_lines": sum(r["raw"] > 40 for r in visible_code),
        "collapsed_cells": len(hidden)}


NOTEBOOK = Path(__file__).resolve().parents[1] / "ELITE_enhancer.ipynb"

if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else NOTEBOOK
    for name, value in shape(target, Path(sys.argv[2]) if len(sys.argv) > 2 else NOTEBOOK).items():
        print(f"{name:32s} {value:.0%}" if isinstance(value, float) else f"{name:32s} {value}")
