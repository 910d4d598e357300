"""How the package's code is shaped: long functions and modules, import cycles, where settings
are checked, where the latent type is tested, and every line that touches Pyro's global RNG or
param store.

    python benchmarks/code_shape.py                  # the report for pyro_vae/
    python benchmarks/code_shape.py --top 10
    python benchmarks/code_shape.py --json shape.json --max-function-lines 40
    python benchmarks/code_shape.py --package path/to/another/package

Everything is found by parsing the code with :mod:`ast` (nothing is imported; comments and
strings are never mistaken for code). Every ``*.py`` file under the package directory is a
module, sub-packages included; a module is named by its path relative to the package directory
(``isolation.py``, ``_bundled/make_mnist_sample.py``). What each measure counts:

function bodies
    A function's (or method's) body runs from its first statement after the docstring to its
    last line: the ``def`` line, the signature, decorators and the docstring are not counted;
    blank lines and comments inside the body are. A nested function's lines count towards the
    function holding it, and the nested function is measured on its own as well. A function
    that is only a docstring has a body of 0 lines.
module lines
    Physical lines of the file (what ``wc -l`` counts, give or take a last line without a newline).
import cycles
    A graph whose nodes are the package's modules and whose edges are its imports of its own
    modules: ``import pkg.data``, ``from pkg.data import x``, ``from pkg import data`` (``data``
    being a submodule), relative imports and ``importlib.import_module("pkg.data")``. An edge is
    marked ``module`` when some import of it runs when the module is imported (module level, in
    a class body, an ``if`` or a ``try``), ``function`` when every import of it sits inside a
    function (an import put there to dodge a cycle is still a cycle), and ``type-checking``
    when it is only under ``if TYPE_CHECKING:``. Cycles are the strongly connected components
    (Tarjan's algorithm) of more than one module, over all edges; those that remain over
    ``module`` edges alone are the ones Python meets while importing. The package's own
    ``__init__.py`` is not a node: ``import pkg.data`` runs ``pkg/__init__.py`` first, so with
    it as a node every module that re-exports through it would close a cycle and hide the real
    ones. Its imports, and the names the modules import from it, are listed on their own.
fan-out and fan-in
    How many of the package's modules a module imports (any kind of edge), and how many import
    it. The hub is the module with the largest fan-in times fan-out: the one that most modules
    depend on *and* that depends on most (a leaf such as the errors module, however often
    imported, or the command line, importing everything, is not one).
where settings are checked
    Check functions are those named ``check_*``, ``require_*``, ``validate`` or ``validate_*``
    (functions and methods); ``_check_*`` and the like are private ones, listed apart. A call
    site is a call of such a name, resolved to the module defining it through the caller's
    imports (method calls such as ``config.validate()`` by name, among the definitions). The
    setting a call checks is its first string argument (``require_whole(v, "latent_dim")``),
    else its ``name=`` (or ``what=``, ``flag=``, ``setting=``) argument, else the last name of
    its first argument (``check_seed(args.seed)``: seed), else the name of the check without
    ``check_`` (``check_seed()``); leading dashes go and dashes become underscores (``--seed``:
    seed). A setting is checked in one place when one module holds all its calls; the heuristic
    also names arguments that are no settings (``check_images(vae, ...)``: vae). Whole-number
    tests are functions named like ``is_whole``, ``_is_int``, ``require_whole`` or
    ``check_integer``, and functions whose own body tests ``isinstance(x, int)`` (or
    ``numbers.Integral``) together with ``isinstance(x, bool)`` in one ``and``/``or``.
latent-type tests
    Test sites that look at which latent space or prior is in use: a comparison or membership
    test (``ast.Compare``) with an operand that is one of the strings "hyperspherical",
    "spherical", "normal", "mixture", "vamp" (in any case, or any string with "spherical" in
    it), a tuple, list or set holding one, or a name or attribute with "spherical" in it; the
    test of an ``if``, ternary, ``while``, ``assert`` or comprehension ``if`` that is such a
    name, attribute or call (``if spherical:``, ``x if self.spherical else y``), through
    ``and``, ``or`` and ``not``; a keyword argument with "spherical" in its name
    (``spherical=...``); ``isinstance`` with a class with "spherical" in its name; and a
    ``case`` on one of the strings. Each node counts once.
global state
    A call that reads or writes the process-wide RNGs (``pyro.set_rng_seed``,
    ``torch.manual_seed``, ``torch.set_rng_state``, ``np.random.seed``, ...) or Pyro's global
    param store (``pyro.get_param_store``, ``pyro.clear_param_store``, ``.scope(``). One module
    should own these; everything else asks it.

``main(argv)`` prints the report and returns it as a dict (the same as ``--json`` writes).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

PACKAGE = Path(__file__).resolve().parent.parent / "pyro_vae"
MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 600

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

CHECK_NAME = re.compile(r"^(check_\w+|require_\w+|validate|validate_\w+)$")
PRIVATE_CHECK_NAME = re.compile(r"^_+(check_\w+|require_\w+|validate|validate_\w+)$")
WHOLE_NAME = re.compile(r"^_*(is|as|require|check|ensure)_*(whole|int|integer|integral)(_\w*)?$")
LATENT_STRINGS = {"hyperspherical", "spherical", "normal", "mixture", "vamp"}
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
LEVEL_RANK = {"module": 0, "function": 1, "type-checking": 2}


class Module(NamedTuple):
    """One parsed ``.py`` file of the package. (Not a dataclass: tests load this file with
    importlib, without putting it in ``sys.modules``, which dataclasses need.)"""

    rel: str  # path relative to the package directory: "data.py", "sub/__init__.py"
    dotted: str  # "pkg.data", "pkg.sub" for sub/__init__.py, "pkg" for the root
    tree: ast.Module
    lines: int

    @property
    def is_package(self) -> bool:
        return self.rel == "__init__.py" or self.rel.endswith("/__init__.py")


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _last_name(node: ast.AST) -> str | None:
    """``check_seed`` for ``check_seed`` and for ``isolation.check_seed``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def load_modules(package: Path) -> list[Module]:
    """Every ``*.py`` file under ``package`` (sub-packages included), parsed, in path order."""
    package = Path(package)
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if any(part.startswith(".") or part == "__pycache__" for part in rel.split("/")):
            continue
        parts = [package.name, *rel[: -len(".py")].split("/")]
        if parts[-1] == "__init__":
            parts.pop()
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        found.append(Module(rel, ".".join(parts), tree, len(text.splitlines())))
    return found


def _walk_functions(tree: ast.AST):
    """``(qualified name, node)`` of every function and method, nested ones included."""

    def visit(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, FUNCTIONS):
                yield f"{prefix}{child.name}", child
                yield from visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            else:
                yield from visit(child, prefix)

    yield from visit(tree, "")


def _own_nodes(function: ast.AST):
    """The nodes of a function's body, without those of the functions and classes inside it."""
    stack = list(function.body) if isinstance(function, FUNCTIONS) else [function]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (*FUNCTIONS, ast.ClassDef, ast.Lambda)):
                stack.append(child)


def _contexts(tree: ast.AST):
    """``(node, enclosing function's qualified name or None, under if TYPE_CHECKING)``."""

    def visit(node: ast.AST, function: str | None, prefix: str, typing_only: bool):
        for child in ast.iter_child_nodes(node):
            yield child, function, typing_only
            if isinstance(child, FUNCTIONS):
                name = f"{prefix}{child.name}"
                yield from visit(child, name, f"{name}.", typing_only)
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, function, f"{prefix}{child.name}.", typing_only)
            elif isinstance(child, ast.If) and _dotted(child.test).endswith("TYPE_CHECKING"):
                for statement in child.body:
                    yield statement, function, True
                    yield from visit(statement, function, prefix, True)
                for statement in child.orelse:
                    yield statement, function, typing_only
                    yield from visit(statement, function, prefix, typing_only)
            else:
                yield from visit(child, function, prefix, typing_only)

    yield from visit(tree, None, "", False)


# ---------------------------------------------------------------- function and module lengths


def function_bodies(path: Path, rel: str | None = None) -> list[dict]:
    """Every function and method of one file, with its body's length (see the module's doc)."""
    path = Path(path)
    return _function_bodies(ast.parse(path.read_text(encoding="utf-8")), rel or path.name)


def _function_bodies(tree: ast.Module, rel: str) -> list[dict]:
    found = []
    for name, node in _walk_functions(tree):
        body = node.body[1:] if ast.get_docstring(node, clean=False) is not None else node.body
        lines = node.end_lineno - body[0].lineno + 1 if body else 0
        found.append({"module": rel, "name": name, "line": node.lineno, "lines": lines})
    return found


def functions(path: Path) -> list[tuple[int, str]]:
    """``(body lines, "file:qualified name")`` of every function and method in a file."""
    return [(f["lines"], f"{f['module']}:{f['name']}") for f in function_bodies(path)]


def measure_functions(modules: list[Module], limit: int = MAX_FUNCTION_LINES) -> dict:
    found = [f for m in modules for f in _function_bodies(m.tree, m.rel)]
    found.sort(key=lambda f: (-f["lines"], f["module"], f["line"]))
    over = [f for f in found if f["lines"] > limit]
    return {
        "limit": limit,
        "count": len(found),
        "over_limit": len(over),
        "longest": found[0] if found else None,
        "over": over,
        "by_length": found,
    }


def measure_modules(modules: list[Module], limit: int = MAX_MODULE_LINES) -> dict:
    sizes = sorted(
        ({"module": m.rel, "lines": m.lines} for m in modules),
        key=lambda s: (-s["lines"], s["module"]),
    )
    over = [s for s in sizes if s["lines"] > limit]
    return {
        "limit": limit,
        "count": len(sizes),
        "over_limit": len(over),
        "total_lines": sum(s["lines"] for s in sizes),
        "over": over,
        "by_length": sizes,
    }


# ------------------------------------------------------------------------------------ imports


def _package_of(module: Module) -> str:
    return module.dotted if module.is_package else module.dotted.rpartition(".")[0]


def _resolve_from(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(module).split(".")
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def _owner(dotted: str, by_dotted: dict[str, Module]) -> Module | None:
    """The package's module that ``dotted`` names, or holding it (``pkg.data.load`` -> data)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        found = by_dotted.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def module_imports(module: Module, by_dotted: dict[str, Module]) -> list[dict]:
    """Each import, in ``module``, of a module of the package: ``{"to", "line", "level",
    "names"}``, ``to`` being a relative path (the package root's ``__init__.py`` included)."""
    found = []

    def add(target: Module | None, line: int, level: str, names: list[str]) -> None:
        if target is not None and target.rel != module.rel:
            found.append({"to": target.rel, "line": line, "level": level, "names": names})

    root = next(iter(by_dotted.values())).dotted.split(".")[0] if by_dotted else ""
    for node, function, typing_only in _contexts(module.tree):
        level = "type-checking" if typing_only else "function" if function else "module"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root:
                    add(_owner(alias.name, by_dotted), node.lineno, level, [])
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, node)
            if base.split(".")[0] != root:
                continue
            from_base = []
            for alias in node.names:
                submodule = by_dotted.get(f"{base}.{alias.name}")
                if submodule is not None:
                    add(submodule, node.lineno, level, [])
                else:
                    from_base.append(alias.name)
            if from_base:
                add(_owner(base, by_dotted), node.lineno, level, from_base)
        elif isinstance(node, ast.Call) and _dotted(node.func) in (
            "importlib.import_module",
            "import_module",
            "__import__",
        ):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                if first.value.split(".")[0] == root:
                    add(_owner(first.value, by_dotted), node.lineno, level, [])
    return found


def _tarjan(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), each sorted; iterative, so any depth will do."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _shortest_cycle(start: str, members: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest closed path from ``start`` through ``members`` (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(edges.get(node, ())):
            if child == start:
                return [*paths[node], start]
            if child in members and child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    return [start]


def _import_edges(modules: list[Module], root: str | None) -> tuple[list[dict], list[dict]]:
    """The edges between the package's modules (the imports of each pair grouped into one),
    and, apart, the imports to or from the package root ``root``."""
    by_dotted = {m.dotted: m for m in modules}
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    root_imports = []
    for module in modules:
        for imp in module_imports(module, by_dotted):
            if root in (module.rel, imp["to"]):
                root_imports.append({"from": module.rel, **imp})
            else:
                grouped[module.rel, imp["to"]].append(imp)
    edges = []
    for (source, target), imports in sorted(grouped.items()):
        level = min((i["level"] for i in imports), key=LEVEL_RANK.__getitem__)
        edges.append(
            {
                "from": source,
                "to": target,
                "level": level,
                "function_level": level == "function",
                "imports": [{"line": i["line"], "level": i["level"]} for i in imports],
            }
        )
    return edges, root_imports


def _cycles(nodes: list[str], edges: list[dict]) -> tuple[list[dict], list[list[str]]]:
    """The cycles over all edges, and those over module-level edges alone."""
    graph, runtime = defaultdict(set), defaultdict(set)
    for edge in edges:
        graph[edge["from"]].add(edge["to"])
        if edge["level"] == "module":
            runtime[edge["from"]].add(edge["to"])
    runtime_cycles = [c for c in _tarjan(nodes, runtime) if len(c) > 1]
    cycles = []
    for members in (c for c in _tarjan(nodes, graph) if len(c) > 1):
        inside = [e for e in edges if e["from"] in members and e["to"] in members]
        cycles.append(
            {
                "modules": members,
                "size": len(members),
                "edges": inside,
                "function_level_edges": sum(e["function_level"] for e in inside),
                "at_import_time": any(set(c) <= set(members) for c in runtime_cycles),
                "example": _shortest_cycle(members[0], set(members), graph),
            }
        )
    cycles.sort(key=lambda c: (-c["size"], c["modules"]))
    return cycles, runtime_cycles


def measure_imports(modules: list[Module]) -> dict:
    root = next((m.rel for m in modules if m.rel == "__init__.py"), None)
    edges, root_imports = _import_edges(modules, root)
    nodes = [m.rel for m in modules if m.rel != root]
    cycles, runtime_cycles = _cycles(nodes, edges)
    fan_out, fan_in = dict.fromkeys(nodes, 0), dict.fromkeys(nodes, 0)
    for edge in edges:
        fan_out[edge["from"]] += 1
        fan_in[edge["to"]] += 1
    hub = max(
        nodes, key=lambda n: (fan_in[n] * fan_out[n], fan_in[n] + fan_out[n], n), default=None
    )
    return {
        "excluded": root,
        "edges": edges,
        "edge_count": len(edges),
        "function_level_edge_count": sum(e["function_level"] for e in edges),
        "root_imports": root_imports,
        "cycles": cycles,
        "cycle_count": len(cycles),
        "import_time_cycles": runtime_cycles,
        "import_time_cycle_count": len(runtime_cycles),
        "fan_out": fan_out,
        "fan_in": fan_in,
        "hub": hub and {"module": hub, "fan_in": fan_in[hub], "fan_out": fan_out[hub]},
    }


# ----------------------------------------------------------------- where settings are checked


def _bindings(module: Module, by_dotted: dict[str, Module]) -> dict[str, tuple[str, str | None]]:
    """Names a module imports from the package: local name -> (module, name there or None
    for the module itself)."""
    bound = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = by_dotted.get(alias.name)
                if target is not None and alias.asname:
                    bound[alias.asname] = (target.rel, None)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, node)
            for alias in node.names:
                local = alias.asname or alias.name
                if f"{base}.{alias.name}" in by_dotted:
                    bound[local] = (by_dotted[f"{base}.{alias.name}"].rel, None)
                elif base in by_dotted:
                    bound[local] = (by_dotted[base].rel, alias.name)
    return bound


def _setting(call: ast.Call, callee: str) -> tuple[str | None, str]:
    """The setting a check call checks (``--learning-rate`` read as ``learning_rate``), and
    where that came from (see the module's doc)."""
    name, source = _setting_as_written(call, callee)
    return (name.lstrip("-").replace("-", "_") if name else None), source


def _setting_as_written(call: ast.Call, callee: str) -> tuple[str | None, str]:
    for arg in call.args:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value, "string"
    for keyword in call.keywords:
        if keyword.arg in ("name", "what", "setting", "flag"):
            if isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str):
                return keyword.value.value, "string"
    if call.args:
        first = call.args[0]
        if isinstance(first, ast.Subscript) and isinstance(first.slice, ast.Constant):
            return str(first.slice.value), "argument"
        name = _last_name(first)
        if name is not None:
            return name, "argument"
    stem = re.sub(r"^_*(check|require|validate)_?", "", callee)
    return (stem or None), "check's name"


def _is_instance_of(node: ast.AST, names: set[str]) -> bool:
    """``isinstance(x, T)`` (or ``not isinstance(...)``) with some T's last name in ``names``."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        node = node.operand
    if not (isinstance(node, ast.Call) and _last_name(node.func) == "isinstance"):
        return False
    if len(node.args) != 2:
        return False
    kinds = node.args[1]
    options = kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]
    return any(_last_name(option) in names for option in options)


def _tests_whole_number(function: ast.AST) -> bool:
    for node in _own_nodes(function):
        if isinstance(node, ast.BoolOp):
            ints = any(_is_instance_of(v, {"int", "Integral", "integer"}) for v in node.values)
            if ints and any(_is_instance_of(v, {"bool", "bool_"}) for v in node.values):
                return True
    return False


def _is_check(name: str) -> bool:
    return bool(CHECK_NAME.match(name) or PRIVATE_CHECK_NAME.match(name))


def _check_definitions(modules: list[Module]) -> dict:
    """The check functions (public and private) and the whole-number tests, defined where."""
    found = {"definitions": [], "private": [], "whole": [], "defined": defaultdict(list)}
    for module in modules:
        for name, node in _walk_functions(module.tree):
            row = {"module": module.rel, "name": name, "line": node.lineno}
            if CHECK_NAME.match(node.name):
                found["definitions"].append(row)
            elif PRIVATE_CHECK_NAME.match(node.name):
                found["private"].append(row)
            if _is_check(node.name) and module.rel not in found["defined"][node.name]:
                found["defined"][node.name].append(module.rel)
            by_name, by_body = bool(WHOLE_NAME.match(node.name)), _tests_whole_number(node)
            if by_name or by_body:
                how = "name and body" if by_name and by_body else "name" if by_name else "body"
                found["whole"].append({**row, "by": how})
    return found


class _Resolver:
    """Which of the package's modules defines the function a call names."""

    def __init__(self, modules: list[Module], defined: dict[str, list[str]]) -> None:
        by_dotted = {m.dotted: m for m in modules}
        self.bindings = {m.rel: _bindings(m, by_dotted) for m in modules}
        self.top_level = {
            m.rel: {
                node.name for node in m.tree.body if isinstance(node, (*FUNCTIONS, ast.ClassDef))
            }
            for m in modules
        }
        self.defined = defined

    def origin(self, rel: str, name: str, depth: int = 0) -> str:
        """The module defining ``name`` as seen from ``rel``, following re-exports."""
        bound = self.bindings[rel].get(name)
        if name in self.top_level[rel] or depth > 10 or bound is None or bound[1] is None:
            return rel
        return self.origin(bound[0], bound[1], depth + 1)

    def __call__(self, rel: str, func: ast.AST, callee: str) -> list[str]:
        bindings = self.bindings[rel]
        if isinstance(func, ast.Name):
            bound = bindings.get(callee)
            if callee in self.top_level[rel]:
                return [rel]
            if bound is not None and bound[1] is not None:
                return [self.origin(bound[0], bound[1])]
            # a builtin's or another library's, or a function nested in this module
            return [rel] if rel in self.defined.get(callee, []) else []
        holder = bindings.get(func.value.id) if isinstance(func.value, ast.Name) else None
        if holder is not None and holder[1] is None:  # module.check_x(...)
            return [self.origin(holder[0], callee)]
        return list(self.defined.get(callee, []))  # a method: where one of that name is


def _check_calls(modules: list[Module], defined: dict[str, list[str]]) -> list[dict]:
    """Each call of a check function of the package, with its caller and setting."""
    resolve, calls = _Resolver(modules, defined), []
    for module in modules:
        for node, function, _ in _contexts(module.tree):
            callee = _last_name(node.func) if isinstance(node, ast.Call) else None
            if callee is None or not _is_check(callee):
                continue
            where = resolve(module.rel, node.func, callee)
            if not where:  # not one of the package's
                continue
            setting, source = _setting(node, callee)
            calls.append(
                {
                    "module": module.rel,
                    "caller": function or "<module>",
                    "line": node.lineno,
                    "callee": callee,
                    "defined_in": where,
                    "private": bool(PRIVATE_CHECK_NAME.match(callee)),
                    "setting": setting,
                    "setting_from": source,
                }
            )
    return calls


def _settings_table(calls: list[dict]) -> dict[str, dict]:
    """setting -> how many calls check it, from which modules, with which checks."""
    settings: dict[str, dict] = {}
    for call in calls:
        if call["private"] or call["setting"] is None:
            continue
        entry = settings.setdefault(call["setting"], {"sites": 0, "modules": [], "checks": []})
        entry["sites"] += 1
        if call["module"] not in entry["modules"]:
            entry["modules"].append(call["module"])
        if call["callee"] not in entry["checks"]:
            entry["checks"].append(call["callee"])
    return dict(sorted(settings.items()))


def measure_checks(modules: list[Module]) -> dict:
    found = _check_definitions(modules)
    definitions, private = found["definitions"], found["private"]
    calls = _check_calls(modules, found["defined"])
    by_function = {}
    for row in definitions + private:
        simple = row["name"].rpartition(".")[2]
        sites = [c for c in calls if c["callee"] == simple and row["module"] in c["defined_in"]]
        by_function[f"{row['module']}:{row['name']}"] = {
            "calls": len(sites),
            "calling_modules": sorted({c["module"] for c in sites}),
        }
    public_calls = [c for c in calls if not c["private"]]
    settings = _settings_table(calls)
    return {
        "definitions": definitions,
        "definition_count": len(definitions),
        "defining_modules": sorted({d["module"] for d in definitions}),
        "defining_module_count": len({d["module"] for d in definitions}),
        "calls": public_calls,
        "call_count": len(public_calls),
        "calling_modules": sorted({c["module"] for c in public_calls}),
        "calling_module_count": len({c["module"] for c in public_calls}),
        "private_definitions": private,
        "private_calls": [c for c in calls if c["private"]],
        "by_function": by_function,
        "settings": settings,
        "settings_in_several_modules": [s for s, e in settings.items() if len(e["modules"]) > 1],
        "whole_number_tests": found["whole"],
        "whole_number_test_count": len(found["whole"]),
    }


# ------------------------------------------------------------------------- latent-type tests


def _latent_string(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value.lower()
        return text in LATENT_STRINGS or "spherical" in text
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_latent_string(element) for element in node.elts)
    return False


def _spherical_name(node: ast.AST) -> bool:
    name = _last_name(node)
    return name is not None and "spherical" in name.lower()


def _truth_test(node: ast.AST) -> bool:
    """A test that is a "spherical" name, attribute or call, through and/or/not."""
    if isinstance(node, ast.BoolOp):
        return any(_truth_test(value) for value in node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _truth_test(node.operand)
    if isinstance(node, ast.Call):
        return _spherical_name(node.func)
    return _spherical_name(node)


def latent_tests(tree: ast.Module) -> list[dict]:
    """``{"line", "kind", "code"}`` of each latent-type test site in a parsed module."""
    sites = []

    def add(node: ast.AST, kind: str) -> None:
        code = ast.unparse(node)
        sites.append({"line": node.lineno, "kind": kind, "code": code[:100]})

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_latent_string(o) or _spherical_name(o) for o in operands):
                add(node, "compare")
        elif isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)):
            if _truth_test(node.test):
                add(node.test, "truth")
        elif isinstance(node, ast.comprehension):
            for test in node.ifs:
                if _truth_test(test):
                    add(test, "truth")
        elif isinstance(node, ast.Call):
            if _last_name(node.func) == "isinstance" and len(node.args) == 2:
                kinds = node.args[1]
                options = kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]
                if any(_spherical_name(option) for option in options):
                    add(node, "isinstance")
            for keyword in node.keywords:
                if keyword.arg and "spherical" in keyword.arg.lower():
                    add(keyword, "keyword")
        elif isinstance(node, ast.MatchValue) and _latent_string(node.value):
            add(node.value, "case")
    return sorted(sites, key=lambda s: (s["line"], s["kind"]))


def measure_latent_tests(modules: list[Module]) -> dict:
    sites = {m.rel: latent_tests(m.tree) for m in modules}
    per_module = {rel: len(found) for rel, found in sites.items() if found}
    kinds: dict[str, int] = defaultdict(int)
    for found in sites.values():
        for site in found:
            kinds[site["kind"]] += 1
    return {
        "total": sum(per_module.values()),
        "per_module": dict(sorted(per_module.items(), key=lambda kv: (-kv[1], kv[0]))),
        "modules": sorted(per_module),
        "module_count": len(per_module),
        "by_kind": dict(sorted(kinds.items())),
        "sites": {rel: found for rel, found in sites.items() if found},
    }


# ----------------------------------------------------------------------------- global state


def global_state_calls(path: Path) -> list[tuple[int, str]]:
    """``(line, call)`` for each call of a global RNG or param-store function in a file."""
    return _global_state_calls(ast.parse(Path(path).read_text(encoding="utf-8")))


def _global_state_calls(tree: ast.Module) -> list[tuple[int, str]]:
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in GLOBAL_STATE_CALLS or name.endswith("param_store().scope"):
            calls.append((node.lineno, name))
    return sorted(calls)


# ------------------------------------------------------------------------------------ report


def analyze(
    package: Path = PACKAGE,
    max_function_lines: int = MAX_FUNCTION_LINES,
    max_module_lines: int = MAX_MODULE_LINES,
) -> dict:
    """Every measure for the package in directory ``package``."""
    package = Path(package).resolve()
    if not package.is_dir():
        raise SystemExit(f"no package directory {package}")
    modules = load_modules(package)
    touches = [(m.rel, line, call) for m in modules for line, call in _global_state_calls(m.tree)]
    return {
        "package": str(package),
        "module_count": len(modules),
        "functions": measure_functions(modules, max_function_lines),
        "modules": measure_modules(modules, max_module_lines),
        "imports": measure_imports(modules),
        "checks": measure_checks(modules),
        "latent_tests": measure_latent_tests(modules),
        "touches": touches,
        "touch_modules": sorted({module for module, _, _ in touches}),
    }


def _heading(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 96 - len(title)))


def _edge(edge: dict) -> str:
    lines = ",".join(str(i["line"]) for i in edge["imports"])
    mark = "" if edge["level"] == "module" else f"  [{edge['level']}]"
    return f"{edge['from']} -> {edge['to']} (line {lines}){mark}"


def _print_lengths(result: dict, top: int) -> None:
    functions = result["functions"]
    _heading(f"function bodies over {functions['limit']} lines")
    print("(body: from the first statement after the docstring to the end of the function)")
    longest = functions["longest"]
    if longest:
        print(f"longest: {longest['module']}:{longest['name']}, {longest['lines']} lines")
    print(f"over {functions['limit']}: {functions['over_limit']} of {functions['count']}")
    for f in functions["over"] or functions["by_length"][:top]:
        print(f"  {f['lines']:4d}  {f['module']}:{f['name']} (line {f['line']})")

    modules = result["modules"]
    _heading(f"modules over {modules['limit']} lines")
    print(
        f"over {modules['limit']}: {modules['over_limit']} of {modules['count']} "
        f"({modules['total_lines']} lines in all)"
    )
    for m in modules["over"] or modules["by_length"][:top]:
        print(f"  {m['lines']:5d}  {m['module']}")


def _print_imports(imports: dict, top: int) -> None:
    _heading("import cycles")
    print(
        f"{imports['edge_count']} import edges between modules, "
        f"{imports['function_level_edge_count']} of them only inside functions; "
        f"{imports['excluded'] or 'no __init__.py'} is not a node"
    )
    print(
        f"cycles (strongly connected components): {imports['cycle_count']}, of which "
        f"{imports['import_time_cycle_count']} over module-level imports alone"
    )
    for number, cycle in enumerate(imports["cycles"], 1):
        when = "at import time" if cycle["at_import_time"] else "through function-level imports"
        print(f"  {number}. {', '.join(cycle['modules'])} ({when})")
        print(f"     e.g. {' -> '.join(cycle['example'])}")
        for edge in cycle["edges"]:
            print(f"     {_edge(edge)}")

    _heading("import fan-out and fan-in")
    hub = imports["hub"]
    if hub:
        print(
            f"hub (largest fan-in x fan-out): {hub['module']}, imports {hub['fan_out']} "
            f"modules, imported by {hub['fan_in']}"
        )
    fan_out = sorted(imports["fan_out"].items(), key=lambda kv: (-kv[1], kv[0]))
    fan_in = sorted(imports["fan_in"].items(), key=lambda kv: (-kv[1], kv[0]))
    print(f"  {'imports most':<38}{'imported most'}")
    for (a, n), (b, k) in zip(fan_out[:top], fan_in[:top], strict=False):
        print(f"  {n:3d}  {a:<33}{k:3d}  {b}")
    if imports["root_imports"]:
        roots = sorted({i["from"] for i in imports["root_imports"]})
        print(
            f"imports to or from {imports['excluded']}: {len(imports['root_imports'])} "
            f"(in {', '.join(roots)})"
        )


def _print_checks(checks: dict) -> None:
    _heading("where settings are checked")
    print(
        f"check functions (check_*, require_*, validate): {checks['definition_count']}, "
        f"defined in {checks['defining_module_count']} modules, called "
        f"{checks['call_count']} times from {checks['calling_module_count']} modules"
    )
    for row in checks["definitions"]:
        key = f"{row['module']}:{row['name']}"
        use = checks["by_function"][key]
        callers = ", ".join(use["calling_modules"]) or "-"
        print(f"  {key} (line {row['line']}): {use['calls']} calls, from {callers}")
    private = [f"{r['module']}:{r['name']}" for r in checks["private_definitions"]]
    print(f"private checks (_check_* ...): {len(private)}: {', '.join(private) or '-'}")
    several = checks["settings_in_several_modules"]
    print(
        f"settings (as the calls name them) checked in more than one module: {len(several)} "
        f"of {len(checks['settings'])}"
    )
    for setting in several:
        entry = checks["settings"][setting]
        print(f"  {setting}: {', '.join(entry['modules'])} (by {', '.join(entry['checks'])})")
    once = [f"{s} ({e['modules'][0]})" for s, e in checks["settings"].items() if s not in several]
    print(f"checked in one module: {', '.join(once) or '-'}")
    print(f"whole-number tests: {checks['whole_number_test_count']}")
    for row in checks["whole_number_tests"]:
        print(f"  {row['module']}:{row['name']} (line {row['line']}, by {row['by']})")


def print_report(result: dict, top: int = 5) -> None:
    print(f"the shape of {Path(result['package']).name}/: {result['module_count']} modules")
    _print_lengths(result, top)
    _print_imports(result["imports"], top)
    _print_checks(result["checks"])

    latent = result["latent_tests"]
    _heading("where the latent type is tested")
    kinds = ", ".join(f"{k} {n}" for k, n in latent["by_kind"].items())
    print(f"test sites: {latent['total']} in {latent['module_count']} modules ({kinds or '-'})")
    for rel, count in latent["per_module"].items():
        print(f"  {count:4d}  {rel}")

    touches = result["touches"]
    _heading("global RNG and param store")
    print(
        f"calls that touch the global RNG or Pyro's param store: {len(touches)}, "
        f"in {len(result['touch_modules'])} module(s)"
    )
    for module, line, call in touches:
        print(f"  {module}:{line}  {call}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=PACKAGE, help="the package directory")
    parser.add_argument("--top", type=int, default=5, help="how many rows of the top lists")
    parser.add_argument(
        "--max-function-lines",
        type=int,
        default=MAX_FUNCTION_LINES,
        help="longest function body allowed (default %(default)s)",
    )
    parser.add_argument(
        "--max-module-lines",
        type=int,
        default=MAX_MODULE_LINES,
        help="longest module allowed (default %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="also write the whole result here as JSON")
    args = parser.parse_args(argv)
    result = analyze(args.package, args.max_function_lines, args.max_module_lines)
    print_report(result, args.top)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
