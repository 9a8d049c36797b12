"""Package-wide rules that no single module's tests would notice."""

import ast
from pathlib import Path

import aal_k8s


def test_no_validation_in_the_package_relies_on_assert():
    found = []
    for f in sorted(Path(aal_k8s.__file__).parent.rglob("*.py")):
        found += [f"{f.name}:{n.lineno}" for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.Assert)]
    assert found == [], "asserts vanish under python -O: " + ", ".join(found)
