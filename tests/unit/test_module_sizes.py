"""No module of the package grows past a size a reader takes in at once."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lib" / "dockyard"
MAX_LINES = 450


def test_no_module_is_over_450_lines() -> None:
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert len(sizes) > 50, "the package's modules are found"
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}
