"""How big the notebook is as GitHub shows it (every cell expanded), against the size goals; with --before REV also
the files at a git revision, side by side: python tests/notebook_shape.py [--before REV]"""
import argparse
import json
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK, TESTS, README = ROOT / "ELITE_enhancer.ipynb", ROOT / "tests", ROOT / "README.md"
GOALS = {  # figure: (label, most allowed)
    "code_lines": ("lines of code cells", 1900), "cells_over_40_lines": ("code cells over 40 lines", 0),
    "wide_lines": ("code lines over 110 characters", 0), "section_3_at": ("'## 3.' starts at (of all lines)", 0.25),
    "enhancer_at": ("class OneStepEnhancer starts at", 0.50), "test_lines": ("Python lines under tests/", 2000),
    "readme_kb": ("README KB (1000 bytes)", 15)}

def measure(notebook_path: Path, tests_dir: Path, readme_path: Path) -> dict:
    """The figures of GOALS; a start is the share of all markdown and code lines before the cell (1.0: none)."""
    cells = [(cell["cell_type"], "".join(cell["source"]).splitlines()) for cell in json.loads(
        Path(notebook_path).read_text(encoding="utf-8"))["cells"] if cell["cell_type"] in ("markdown", "code")]
    starts = [sum(len(lines) for _, lines in cells[:index]) for index in range(len(cells) + 1)]
    first = lambda kind, prefix: next((starts[i] / starts[-1] for i, (k, lines) in enumerate(cells)  # noqa: E731
                                       if k == kind and any(line.startswith(prefix) for line in lines)), 1.0)
    code = [lines for kind, lines in cells if kind == "code"]
    return {"code_lines": sum(map(len, code)), "cells_over_40_lines": sum(len(lines) > 40 for lines in code),
            "wide_lines": sum(len(line) > 110 for lines in code for line in lines),
            "section_3_at": first("markdown", "## 3."), "enhancer_at": first("code", "class OneStepEnhancer"),
            "test_lines": sum(len(path.read_text(encoding="utf-8").splitlines())
                              for path in Path(tests_dir).rglob("*.py")),
            "readme_kb": Path(readme_path).stat().st_size / 1000}

def files_at(revision: str, folder: Path) -> tuple[Path, Path, Path]:
    """The notebook, tests/**/*.py and README of a git revision, written under `folder`."""
    git = lambda *args: subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=True).stdout
    names = git("ls-tree", "-r", "--name-only", revision, "tests/").decode().splitlines()
    for name in [NOTEBOOK.name, README.name, *(name for name in names if name.endswith(".py"))]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(git("show", f"{revision}:{name}"))
    return folder / NOTEBOOK.name, folder / "tests", folder / README.name

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REV", help="also measure the files at this git revision")
    revision = parser.parse_args().before
    columns = {"now": measure(NOTEBOOK, TESTS, README)}
    if revision:
        with tempfile.TemporaryDirectory() as folder:
            columns[revision] = measure(*files_at(revision, Path(folder)))
    print("| figure | goal | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    for name, (label, most) in GOALS.items():
        shown = lambda value: f"{value:.0%}" if name.endswith("_at") else f"{value:.1f}" if isinstance(  # noqa: E731
            value, float) else str(value)
        values = [shown(column[name]) for column in columns.values()]
        print(f"| {label} | ≤ {shown(most)} | " + " | ".join(values) + " |")

if __name__ == "__main__":
    main()
