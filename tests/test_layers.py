"""The layer order: no package imports one above it, nor one beside it at its own level.

    level 0   initdata/ (formats, bounded reads, the error types)
    level 1   attest/ (the TEE side)          bpf.policy (the KubeArmor language)
    level 2   trust/ (every trust decision)   bpf.kernel (libbpf, maps, engine, self-protection)
    level 3   supervisor/ (I/O and processes)

`bpf` itself (bpf/__init__.py) is only the package: it imports nothing and anyone above level 0 may name it.

Every module of the five packages is parsed with `ast`, and every import in it counts: module level,
function level, and under `if TYPE_CHECKING:` alike, since each is a dependency of the code.
The table is the README's ("Architecture"); bench/ and tests/ may import anything.
"""

from __future__ import annotations

import ast
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("initdata", "attest", "trust", "supervisor", "bpf")
FIRST_PARTY = frozenset({*PACKAGES, "tests", "bench"})

LEVEL = {"initdata": 0, "bpf": 0, "attest": 1, "bpf.policy": 1, "trust": 2, "bpf.kernel": 2, "supervisor": 3}

# Which layers each layer may import (its own included); anything else, first-party, is a violation.
MAY_IMPORT = {
    "initdata": {"initdata"},
    "bpf": {"bpf"},
    "attest": {"attest", "initdata"},
    "bpf.policy": {"bpf.policy", "initdata"},
    "trust": {"trust", "initdata", "attest", "bpf.policy"},
    "bpf.kernel": {"bpf.kernel", "bpf.policy", "bpf"},
    "supervisor": {"supervisor", "trust", "attest", "initdata", "bpf", "bpf.policy", "bpf.kernel"},
}
# The lowest layers name their third-party imports too (None: not restricted beyond first-party).
THIRD_PARTY: dict[str, frozenset[str] | None] = {
    "initdata": frozenset({"cryptography", "yaml"}),
    "bpf.policy": frozenset({"yaml"}),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module, resolved to a module name
    where: str  # path:line


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def resolve(node: ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    if node.level:  # relative: resolve against the importing module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join([*base, node.module] if node.module else base)
    else:
        prefix = node.module or ""
    # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
    return [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix for alias in node.names]


def imports_of(module: str, source: str, *, label: str, is_package: bool, known: set[str]) -> list[Import]:
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=label)):  # every import, at any depth
        where = f"{label}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found.extend(Import(module, alias.name, where) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            targets = resolve(node, module, is_package, known)
            found.extend(Import(module, target, where) for target in targets)
    return found


def layer_of(module: str) -> str | None:
    """The layer a first-party module belongs to; None for a module outside the five packages."""
    for layer in sorted(LEVEL, key=len, reverse=True):  # bpf.policy.model before bpf
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def top_level(module: str) -> str:
    return module.split(".")[0]


def all_imports() -> list[Import]:
    found = modules()
    known = set(found)
    return [
        imp
        for name, path in found.items()
        for imp in imports_of(name, path.read_text(), label=str(path.relative_to(REPO)),
                              is_package=path.name == "__init__.py", known=known)
    ]


def violations(imports: list[Import]) -> list[str]:
    problems: list[str] = []
    for imp in imports:
        layer = layer_of(imp.module)
        assert layer is not None, f"{imp.where}: {imp.module} belongs to no layer; classify it in tests/test_layers.py"
        head = top_level(imp.target)
        if head in FIRST_PARTY:
            target_layer = layer_of(imp.target)
            if target_layer is None or target_layer not in MAY_IMPORT[layer]:
                problems.append(f"{imp.where}: {imp.module} ({layer}, level {LEVEL[layer]}) imports {imp.target} "
                                f"({target_layer or 'outside the layers'}); {layer} may import only "
                                f"{', '.join(sorted(MAY_IMPORT[layer]))}")
        elif head not in sys.stdlib_module_names:
            allowed = THIRD_PARTY.get(layer)
            if allowed is not None and head not in allowed:
                problems.append(f"{imp.where}: {imp.module} ({layer}) imports third-party {head}; "
                                f"{layer} may import only the standard library and {', '.join(sorted(allowed))}")
    return problems


def test_every_module_of_the_five_packages_is_parsed_and_placed() -> None:
    found = modules()
    assert len(found) > 50
    for package in PACKAGES:
        assert any(name == package or name.startswith(package + ".") for name in found), package
    unplaced = [name for name in found if layer_of(name) is None]
    assert unplaced == []


def test_the_table_only_ever_points_down() -> None:
    for layer, allowed in MAY_IMPORT.items():
        for other in allowed - {layer}:
            assert LEVEL[other] < LEVEL[layer], f"{layer} may import {other}, which is not below it"


def test_no_import_breaks_the_layer_order() -> None:
    problems = violations(all_imports())
    assert problems == [], "imports against the layer order:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "message"),
    [
        ("initdata.document", "from attest.tee import Tee\n", "(initdata, level 0) imports attest.tee"),
        ("attest.tdx", "def f():\n    from trust.gate import BootGate\n", "(attest, level 1) imports trust.gate"),
        ("trust.gate", "if TYPE_CHECKING:\n    from supervisor import config\n", "imports supervisor.config"),
        ("trust.bundle", "import bpf.kernel.engine\n", "imports bpf.kernel.engine (bpf.kernel)"),
        ("bpf.policy.ruleset", "from bpf.kernel import engine\n",
         "bpf.policy.ruleset (bpf.policy, level 1) imports bpf.kernel.engine"),
        ("bpf.kernel.engine", "from supervisor.config import WardenConfig\n",
         "bpf.kernel.engine (bpf.kernel, level 2) imports supervisor.config"),
        ("bpf.kernel.maps", "import trust.gate\n", "(bpf.kernel, level 2) imports trust.gate"),
        ("initdata.keys", "import tenacity\n", "imports third-party tenacity"),
    ],
)
def test_a_violation_is_reported(module: str, source: str, message: str) -> None:
    """The checker itself: each kind of violation, however the import is written, is caught."""
    imports = imports_of(module, source, label="added.py", is_package=False, known=set(modules()))
    problems = violations(imports)
    assert len(problems) == 1 and message in problems[0], problems
