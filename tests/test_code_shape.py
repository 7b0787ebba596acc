"""The code stays readable in the way the project promises: no function over 60 lines in the packages."""
import ast

from conftest import ROOT

PACKAGES = ("namegen", "training", "export", "serving", "clients")
MAX_FUNCTION_LINES = 60


def test_no_function_in_the_packages_is_over_60_lines():
    long = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 60 lines: " + ", ".join(long)
