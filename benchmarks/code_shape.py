"""How the package's code is shaped: its longest functions, and every line that touches Pyro's
global RNG or param store.

    python benchmarks/code_shape.py            # the report for pyro_vae/
    python benchmarks/code_shape.py --top 10

"Touches global state" means a call that reads or writes the process-wide RNGs
(``pyro.set_rng_seed``, ``torch.manual_seed``, ``torch.set_rng_state``, ``np.random.seed``, ...)
or Pyro's global param store (``pyro.get_param_store``, ``pyro.clear_param_store``,
``.scope(``), found by parsing the code, comments and strings excluded. One module should own
these; everything else asks it.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pyro_vae"

# attribute chains (as written) that read or write process-wide RNG or param-store state
GLOBAL_STATE_CALLS = {
    "pyro.set_rng_seed",
    "pyro.util.set_rng_seed",
    "pyro.get_param_store",
    "pyro.clear_param_store",
    "torch.manual_seed",
    "torch.seed",
    "torch.get_rng_state",
    "torch.set_rng_state",
    "torch.cuda.manual_seed_all",
    "torch.cuda.get_rng_state_all",
    "torch.cuda.set_rng_state_all",
    "np.random.seed",
    "np.random.get_state",
    "np.random.set_state",
    "random.seed",
    "random.getstate",
    "random.setstate",
}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def functions(path: Path) -> list[tuple[int, str]]:
    """``(lines, qualified name)`` of every function and method in a file."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                found.append((child.end_lineno - child.lineno + 1, f"{path.name}:{name}"))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def global_state_calls(path: Path) -> list[tuple[int, str]]:
    """``(line, call)`` for each call of a global RNG or param-store function in a file."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in GLOBAL_STATE_CALLS or name.endswith("param_store().scope"):
            calls.append((node.lineno, name))
    return sorted(calls)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5, help="how many of the longest functions")
    args = parser.parse_args(argv)
    files = sorted(PACKAGE.glob("*.py"))
    lengths = sorted((f for p in files for f in functions(p)), reverse=True)
    print(f"longest functions in {PACKAGE.name}/ (lines, docstring included):")
    for lines, name in lengths[: args.top]:
        print(f"  {lines:4d}  {name}")
    touches = [(p.name, line, call) for p in files for line, call in global_state_calls(p)]
    modules = sorted({name for name, _, _ in touches})
    print(
        f"\ncalls that touch the global RNG or Pyro's param store: {len(touches)}, "
        f"in {len(modules)} module(s)"
    )
    for name, line, call in touches:
        print(f"  {name}:{line}  {call}")
    return {"longest": lengths[0], "touches": touches}


if __name__ == "__main__":
    main()
