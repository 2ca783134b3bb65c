"""The package's architecture holds: no wing imports a wing above it, and no module outgrows one concept.

Every ``import`` in the package (module level and inside functions) is read from the source with
``ast``, so a lazy import that runs only on some path counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fluxsr_cli"
# lower imports nothing higher; wings of one rank import neither each other
RANKS = {"shared": 0, "model": 1, "images": 1, "quality": 2, "degrade": 2, "upscale": 3, "train": 4, "demo": 4, "cli": 5}
MAX_LINES = 500


def wing(module: str) -> str:
    """``fluxsr_cli.upscale.restore`` (or a name in it) -> ``upscale``; the top-level modules are the shared ground."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else "shared"


def package_imports(path: Path, module: str) -> set[str]:
    """The ``fluxsr_cli`` modules that ``path`` imports (absolute and relative imports, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(module.split(".")[:-node.level] + ([base] if base else []))
            # ``from fluxsr_cli.upscale import restore`` names a module; ``from x.y import name`` a name in x.y
            found |= {f"{base}.{a.name}" for a in node.names} | {base}
    return {name for name in found if name.startswith("fluxsr_cli.") or name == "fluxsr_cli"}


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return found


def test_every_wing_has_a_rank_and_a_guide():
    wings = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert wings == set(RANKS) - {"shared"}
    for name in wings:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())) or ""
        assert "Open" in doc and "first" in doc, f"{name}/__init__.py should say which module to open first"


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_no_wing_imports_a_wing_above_it(module, path):
    if module in ("fluxsr_cli", "fluxsr_cli.__main__"):
        return  # the package's lazy names and ``python -m`` are the entry points, above everything
    mine = wing(module)
    upward = sorted(name for name in package_imports(path, module)
                    if name not in ("fluxsr_cli", "fluxsr_cli.__version__")
                    and wing(name) != mine and RANKS[wing(name)] >= RANKS[mine])
    assert not upward, f"{module} ({mine}) imports {upward}: wings import only those below them"


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: a model module that imports the upscale wing is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from fluxsr_cli.upscale.restore import load_upscaler\n    from . import vae\n")
    names = package_imports(bad, "fluxsr_cli.model.bad")
    assert "fluxsr_cli.upscale.restore" in names and "fluxsr_cli.model.vae" in names
    assert RANKS[wing("fluxsr_cli.upscale.restore")] > RANKS[wing("fluxsr_cli.model.bad")]


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_no_module_is_over_500_lines(module, path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it where its concerns part"
