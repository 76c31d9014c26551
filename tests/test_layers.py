"""The module map holds: each third-party library is imported by one module, and `get` stays on the stdlib."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "freshtoken"

# library -> the only module allowed to import it
OWNERS = {"requests": "oauth", "yaml": "config", "apscheduler": "daemon", "prometheus_client": "metrics", "psycopg": "pgstore"}
# `freshtoken get` imports these; they must not reach any third-party library
GET_PATH = ("__init__", "__main__", "cli", "getcmd", "dirs", "formats", "model", "durations", "errors")


def imports_of(module: str) -> set[str]:
    """Top-level names of every module `module` imports, at any depth of its code."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` imports are for annotations only: drop them
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_third_party_libraries_stay_in_their_module(module: str) -> None:
    """requests only in oauth, yaml only in config, apscheduler only in daemon, prometheus_client only in metrics."""
    for name in imports_of(module):
        root = name.split(".")[0]
        if root in OWNERS:
            assert OWNERS[root] == module, f"{module}.py imports {name}"


def test_nothing_imports_the_cli() -> None:
    """cli is the shell: no other module imports it (__main__ only runs it)."""
    for module in MODULES:
        if module not in ("cli", "__main__"):
            assert "freshtoken.cli" not in imports_of(module), module


def test_get_path_is_stdlib_at_import_time() -> None:
    """The modules `get` loads import no third-party library at module level."""
    for module in GET_PATH:
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        for node in tree.body:  # module level only: commands import heavy modules inside functions
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                root = name.split(".")[0]
                assert root not in OWNERS, f"{module}.py imports {name} at module level"
                if root == "freshtoken":
                    assert name.split(".")[-1] in GET_PATH or name == "freshtoken", f"{module}.py imports {name}"


def test_get_config_scanner_knows_every_top_level_key() -> None:
    """getcmd's copy of the config's top-level keys (for the yaml-free `get -c`) matches config.TOP_KEYS."""
    from freshtoken import config, getcmd

    assert getcmd.TOP_KEYS == frozenset(config.TOP_KEYS)


def test_the_exception_tree_drawn_in_errors_is_the_real_one() -> None:
    """errors.py's docstring draws every FreshtokenError class once, each with its real parent, exit code, outcome and retryable."""
    from freshtoken import errors

    drawn = {}
    parents: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        words = line.replace("├──", " ").replace("└──", " ").replace("│", " ").split()
        if not words or not hasattr(errors, words[0]):
            continue
        depth = (len(line) - len(line.lstrip(" │├└─"))) // 4 - 1  # the docstring's own indent is 4
        parents[depth:] = [words[0]]
        drawn[words[0]] = (parents[depth - 1] if depth else None, int(words[1]), words[2], words[3] == "yes")
    classes = {c.__name__: c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.FreshtokenError)}
    assert set(drawn) == set(classes)
    for name, cls in classes.items():
        parent = cls.__base__.__name__ if cls is not errors.FreshtokenError else None
        assert drawn[name] == (parent, cls.exit_code, cls.outcome, cls.retryable), name
