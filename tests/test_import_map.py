"""The import map keeps libraries below and scripts on top (issue 26).

An entry-point script is a .py file with an `if __name__ == "__main__":`
block; every other .py file is a library module.  No file imports an
entry-point script: what another file needs lives in a library module.  A
test reaches a script through its command line (tests.helpers.run_script) or
tests.helpers.import_script (its get_parser() and main()), and takes its
shared fixtures and helpers from conftest.py and tests/helpers.py, never
from another test_*.py file.

The map is read with `ast` (nothing is imported), so it covers imports inside
functions too.  README.md's "Scripts and libraries" table names every module
of the recipe's folders as what it is.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import PROJECT_DIR

PROJECT_FOLDERS = ("pruned_transducer_stateless4", "local", "shared", "tools", "benchmarks",
                   "tests")


@dataclass(frozen=True)
class Edge:
    """`importer` imports the project file `imported` (paths relative to the project)."""

    importer: Path
    imported: Path
    line: int

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} -> {self.imported}"


def project_files() -> list[Path]:
    """Every .py file of the project's folders, relative to the project."""
    return sorted(path.relative_to(PROJECT_DIR)
                  for folder in PROJECT_FOLDERS
                  for path in (PROJECT_DIR / folder).rglob("*.py")
                  if "__pycache__" not in path.parts)


def is_entry_point(tree: ast.Module) -> bool:
    """Whether the module has a top-level `if __name__ == "__main__":` block."""
    for node in tree.body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
                and any(isinstance(c, ast.Constant) and c.value == "__main__"
                        for c in node.test.comparators)):
            return True
    return False


def module_file(dotted: str, search_dir: Path, known: set[Path]) -> Path | None:
    """The project file of module `dotted` looked up from `search_dir`
    (relative to the project), or None for a module outside the project."""
    base = search_dir / Path(*dotted.split(".")) if dotted else search_dir
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate in known:
            return candidate
    return None


def imported_modules(node: ast.Import | ast.ImportFrom, path: Path) -> list[tuple[str, Path]]:
    """(dotted name, folder it is looked up from) of every module `node` may
    import: `from a import b` imports a, and a.b when b is a module."""
    if isinstance(node, ast.Import):
        # Absolute from the project root; a script's own folder is first on
        # sys.path too (benchmarks import their sibling modules that way).
        return [(alias.name, root) for alias in node.names
                for root in (Path("."), path.parent)]
    if node.level:  # relative: from the package `level` folders up
        folder = path.parent
        for _ in range(node.level - 1):
            folder = folder.parent
        roots = [folder]
    else:
        roots = [Path("."), path.parent]
    module = node.module or ""
    found = []
    for root in roots:
        found.append((module, root))
        found += [(f"{module}.{alias.name}" if module else alias.name, root)
                  for alias in node.names]
    return found


@functools.cache
def import_edges() -> tuple[list[Edge], set[Path]]:
    """Every import of one project file by another, and the entry-point scripts
    (read once per session)."""
    files = project_files()
    known = set(files)
    trees = {path: ast.parse((PROJECT_DIR / path).read_text(), filename=str(path))
             for path in files}
    entry_points = {path for path, tree in trees.items() if is_entry_point(tree)}
    edges = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = {module_file(name, root, known)
                       for name, root in imported_modules(node, path)}
            edges += [Edge(path, target, node.lineno) for target in sorted(targets - {None})
                      if target != path]
    return edges, entry_points


def test_map_finds_imports_and_entry_points() -> None:
    """The map sees what it checks: train.py is an entry point, a library
    import is an edge, and an import inside a function counts."""
    edges, entry_points = import_edges()
    assert Path("pruned_transducer_stateless4/train.py") in entry_points
    assert Path("pruned_transducer_stateless4/model.py") not in entry_points
    pairs = {(e.importer, e.imported) for e in edges}
    assert (Path("pruned_transducer_stateless4/train.py"),
            Path("shared/rnnt_loss.py")) in pairs
    assert (Path("tests/conftest.py"), Path("tests/helpers.py")) in pairs
    # tests/helpers.py imports the corpus generator's voices inside speak().
    assert any(e.importer == Path("tests/helpers.py") and e.imported.parts[0] == "local"
               for e in edges)


def test_no_file_imports_an_entry_point_script() -> None:
    edges, entry_points = import_edges()
    offending = [str(e) for e in edges if e.imported in entry_points]
    assert not offending, ("these files import an entry-point script (move what they use "
                           "into a library module):\n" + "\n".join(offending))


def test_no_test_imports_another_test_file() -> None:
    edges, _ = import_edges()
    offending = [str(e) for e in edges
                 if e.importer.parts[0] == "tests" and e.imported.name.startswith("test_")]
    assert not offending, ("these tests import another test file (shared fixtures go to "
                           "tests/conftest.py, shared helpers to tests/helpers.py):\n"
                           + "\n".join(offending))


def readme_layout_table() -> dict[str, tuple[set[str], set[str]]]:
    """README.md's "Scripts and libraries" table: {folder: (scripts, libraries)},
    the .py names in backquotes of each column."""
    readme = (PROJECT_DIR / "README.md").read_text()
    section = readme.split("\n## Scripts and libraries\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        scripts, libraries = (set(re.findall(r"`([\w.]+\.py)`", cell)) for cell in cells[1:])
        table[cells[0].strip("`").rstrip("/")] = (scripts, libraries)
    return table


def test_readme_names_every_script_and_library() -> None:
    _, entry_points = import_edges()
    table = readme_layout_table()
    wrong = []
    for folder in PROJECT_FOLDERS[:-1]:  # tests/ is pytest's
        assert folder in table, f"README.md's table has no row for {folder}/"
        scripts, libraries = table[folder]
        files = [path for path in project_files()
                 if path.parent == Path(folder) and path.name != "__init__.py"]
        for path in files:
            listed = path.name in scripts, path.name in libraries
            expected = (True, False) if path in entry_points else (False, True)
            if listed != expected:
                kind = "a script" if path in entry_points else "a library"
                wrong.append(f"{path} is {kind}")
        for name in (scripts | libraries) - {path.name for path in files}:
            wrong.append(f"{folder}/{name} is named but does not exist")
    assert not wrong, ("README.md's Scripts and libraries table is out of date:\n"
                       + "\n".join(wrong))


def test_tests_use_import_script_only_for_get_parser_and_main() -> None:
    """tests.helpers.import_script loads a script in-process for its command
    line only: `import_script(path).get_parser()` or `.main()`."""
    offending = []
    for path in project_files():
        if path.parts[0] != "tests":
            continue
        tree = ast.parse((PROJECT_DIR / path).read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(
                    node.func, "attr", None)) == "import_script"):
                continue
            parent = parents.get(node)
            if not (isinstance(parent, ast.Attribute) and parent.attr in ("get_parser", "main")):
                offending.append(f"{path}:{node.lineno}")
    assert not offending, ("import_script(...) used for more than .get_parser() or .main() "
                           "(take it from a library module):\n" + "\n".join(offending))
