"""bpf/ imports nothing above it, and the policy language nothing from the kernel side.

Layers (each imports only those below it): bpf.policy (the KubeArmor language) <- bpf.kernel (the kernel
side) <- the packages above bpf (initdata, attest, trust, supervisor), which bpf never imports: what to
enforce and what to protect is always the caller's to say. Every import statement counts, function-local
ones too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BPF = Path(__file__).resolve().parents[1] / "bpf"
ABOVE_BPF = ("initdata", "attest", "trust", "supervisor", "tests", "bench")


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("path", sorted(BPF.rglob("*.py")), ids=lambda p: str(p.relative_to(BPF.parent)))
def test_bpf_imports_nothing_above_it(path: Path) -> None:
    above = sorted(m for m in imported_modules(path) if any(within(m, p) for p in ABOVE_BPF))
    assert not above, f"{path.relative_to(BPF.parent)} imports {above}"


@pytest.mark.parametrize("path", sorted((BPF / "policy").rglob("*.py")), ids=lambda p: p.name)
def test_the_policy_language_imports_nothing_from_the_kernel_side(path: Path) -> None:
    kernel = sorted(m for m in imported_modules(path) if within(m, "bpf.kernel") or m == "bpf")
    assert not kernel, f"{path.relative_to(BPF.parent)} imports {kernel}"
