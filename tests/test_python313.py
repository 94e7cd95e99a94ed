"""Colab runs Python 3.13; CI runs 3.11. Every notebook cell must parse and avoid what 3.12/3.13 removed."""
import ast

import pytest

from notebook_library import cell_sources

# PEP 594 modules removed in 3.13, and modules/APIs removed in 3.12
REMOVED_MODULES = {"aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib", "nis",
                   "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib",
                   "lib2to3", "asynchat", "asyncore", "distutils", "imp", "smtpd"}
REMOVED_ATTRIBUTES = {("locale", "resetlocale"), ("typing", "io"), ("typing", "re"), ("unittest", "makeSuite"),
                      ("unittest", "findTestCases"), ("unittest", "getTestCaseNames"), ("configparser", "SafeConfigParser"),
                      ("pathlib", "link_to")}
CODE_CELLS = [source for kind, source in cell_sources() if kind == "code"]


def imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def first_code_line(source: str) -> str:
    """A cell's name in test ids: its first line that is not the export marker."""
    return next((line for line in source.splitlines() if line.strip() and line != "#| export"), "(empty)")[:60]


@pytest.mark.parametrize("source", CODE_CELLS, ids=[first_code_line(source) for source in CODE_CELLS])
def test_cell_parses_and_uses_nothing_removed(source):
    tree = ast.parse(source)
    assert not imported_modules(tree) & REMOVED_MODULES
    attributes = {(node.value.id, node.attr) for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)}
    assert not attributes & REMOVED_ATTRIBUTES
