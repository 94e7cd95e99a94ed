"""The size goals of tests/notebook_shape.py for the notebook, tests and README. The notebook's code is still above
its 1,500-line goal (issue "Half the notebook, every capability"): the bound below is a ratchet at today's size, to
be lowered, never raised."""
from notebook_shape import NOTEBOOK, README, TESTS, measure

CODE_LINES_NOW = 1962  # the goal is 1500

def test_the_size_goals_hold():
    figures = measure(NOTEBOOK, TESTS, README)
    goals = {"code_lines": figures["code_lines"] <= CODE_LINES_NOW, "cells_over_40_lines": figures["cells_over_40_lines"] == 0,
             "wide_lines": figures["wide_lines"] == 0, "section_3_at": figures["section_3_at"] <= 0.25,
             "enhancer_at": figures["enhancer_at"] <= 0.50, "test_lines": figures["test_lines"] <= 2000,
             "readme_kb": figures["readme_kb"] <= 15}
    missed = {name: figures[name] for name, holds in goals.items() if not holds}
    assert not missed, f"goals missed: {missed}"
