"""benchmarks/code_shape.py's measures, each on a small package written for the test (so that
they do not follow the real package's figures), and its report on pyro_vae/ by shape only."""

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("code_shape", ROOT / "benchmarks/code_shape.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


code_shape = _load()


def _package(root: Path, files: dict[str, str], name: str = "pkg") -> Path:
    """A package ``name`` under ``root`` holding ``files`` (relative path -> source)."""
    package = root / name
    for rel, source in {"__init__.py": "", **files}.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return package


def _function(name: str, body_lines: int, docstring_lines: int = 0, indent: str = "") -> str:
    """A function whose body (after its docstring) is ``body_lines`` lines long."""
    lines = [f"{indent}def {name}(a,", f"{indent}        b):"]
    if docstring_lines:
        lines += [f'{indent}    """Doc.'] + [f"{indent}    more"] * (docstring_lines - 1)
        lines[-1] += '"""'
    lines += [f"{indent}    x{i} = {i}" for i in range(body_lines - 1)] + [f"{indent}    return a"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ function bodies


def test_a_function_body_is_measured_without_its_signature_and_docstring(tmp_path):
    source = (
        "import functools\n\n\n@functools.cache\n"
        + _function("long", 60, docstring_lines=12)
        + "\n\nclass Holder:\n"
        + _function("method", 55, indent="    ")
        + "\n\ndef only_a_docstring():\n    '''Nothing else.'''\n"
    )
    package = _package(tmp_path, {"long.py": source})
    bodies = {f["name"]: f["lines"] for f in code_shape.function_bodies(package / "long.py")}
    assert bodies == {"long": 60, "Holder.method": 55, "only_a_docstring": 0}


def test_a_nested_function_counts_in_its_holder_and_on_its_own(tmp_path):
    source = "def outer():\n    x = 1\n" + _function("inner", 10, indent="    ") + "    return x\n"
    package = _package(tmp_path, {"nested.py": source})
    bodies = {f["name"]: f["lines"] for f in code_shape.function_bodies(package / "nested.py")}
    assert bodies == {"outer": 1 + 12 + 1, "outer.inner": 10}


def test_a_60_line_body_is_over_50_and_not_over_70(tmp_path):
    package = _package(tmp_path, {"a.py": _function("long", 60, 5) + _function("short", 20)})
    at_50 = code_shape.analyze(package, max_function_lines=50)["functions"]
    assert at_50["over_limit"] == 1 and at_50["count"] == 2
    assert [(f["module"], f["name"], f["lines"]) for f in at_50["over"]] == [("a.py", "long", 60)]
    assert at_50["longest"]["name"] == "long" and at_50["longest"]["lines"] == 60
    at_70 = code_shape.analyze(package, max_function_lines=70)["functions"]
    assert at_70["over_limit"] == 0 and at_70["over"] == []
    assert at_70["longest"]["lines"] == 60
    # the limit is a flag
    by_flag = code_shape.main(["--package", str(package), "--max-function-lines", "59"])
    assert by_flag["functions"]["over_limit"] == 1
    assert code_shape.main(["--package", str(package)])["functions"]["limit"] == 50


# ----------------------------------------------------------------------------------- modules


def test_a_700_line_module_is_over_600(tmp_path):
    package = _package(
        tmp_path,
        {
            "big.py": "".join(f"x{i} = {i}\n" for i in range(700)),
            "small.py": "".join(f"x{i} = {i}\n" for i in range(500)),
            "sub/deep.py": "".join(f"x{i} = {i}\n" for i in range(650)),
        },
    )
    modules = code_shape.analyze(package)["modules"]
    assert modules["limit"] == 600 and modules["count"] == 4  # with __init__.py
    assert modules["over"] == [
        {"module": "big.py", "lines": 700},
        {"module": "sub/deep.py", "lines": 650},
    ]
    assert modules["over_limit"] == 2
    by_flag = code_shape.main(["--package", str(package), "--max-module-lines", "660"])
    assert [m["module"] for m in by_flag["modules"]["over"]] == ["big.py"]


# ------------------------------------------------------------------------------------ imports

CYCLES = {
    # a -> b at module level, b -> a inside a function: a cycle only through a function
    "a.py": """
        from pkg import b
        from pkg import VERSION  # a name of the package root's, not a module
    """,
    "b.py": """
        import os

        def late():
            from pkg.a import thing
            return thing
    """,
    # c -> d -> c, both at module level (absolute and relative imports)
    "c.py": "import pkg.d as d\n",
    "d.py": "from . import c\n",
    # e imports a and c but nothing imports e: in no cycle; f only for type checking
    "e.py": """
        from typing import TYPE_CHECKING
        import importlib

        from pkg.a import thing
        from .c import other

        if TYPE_CHECKING:
            from pkg.f import Hint

        def lazy():
            return importlib.import_module("pkg.f")
    """,
    "f.py": """
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from pkg.e import Other
    """,
    # the root re-exports everything: no cycle through it
    "__init__.py": """
        from pkg.a import *
        from pkg.e import *
        VERSION = 1
    """,
}


def test_import_cycles_are_found_with_their_function_level_edges_marked(tmp_path):
    imports = code_shape.analyze(_package(tmp_path, CYCLES))["imports"]
    cycles = {tuple(c["modules"]): c for c in imports["cycles"]}
    assert set(cycles) == {("a.py", "b.py"), ("c.py", "d.py"), ("e.py", "f.py")}
    assert imports["cycle_count"] == 3

    ab = cycles["a.py", "b.py"]
    levels = {(e["from"], e["to"]): e["level"] for e in ab["edges"]}
    assert levels == {("a.py", "b.py"): "module", ("b.py", "a.py"): "function"}
    assert [e["function_level"] for e in ab["edges"]] == [False, True]
    assert ab["function_level_edges"] == 1 and not ab["at_import_time"]
    assert ab["example"] in (["a.py", "b.py", "a.py"], ["b.py", "a.py", "b.py"])
    assert [i["line"] for e in ab["edges"] if e["from"] == "b.py" for i in e["imports"]] == [5]

    cd = cycles["c.py", "d.py"]
    assert {e["level"] for e in cd["edges"]} == {"module"} and cd["at_import_time"]
    assert cd["function_level_edges"] == 0

    ef = cycles["e.py", "f.py"]  # e -> f: type checking and importlib in a function
    assert {(e["from"], e["level"]) for e in ef["edges"]} == {
        ("e.py", "function"),
        ("f.py", "type-checking"),
    }
    assert imports["import_time_cycles"] == [["c.py", "d.py"]]
    assert imports["import_time_cycle_count"] == 1


def test_the_package_root_is_no_node_and_its_imports_are_listed_apart(tmp_path):
    imports = code_shape.analyze(_package(tmp_path, CYCLES))["imports"]
    assert imports["excluded"] == "__init__.py"
    assert "__init__.py" not in imports["fan_out"]
    assert all("__init__.py" not in (e["from"], e["to"]) for e in imports["edges"])
    assert sorted((i["from"], i["to"]) for i in imports["root_imports"]) == [
        ("__init__.py", "a.py"),
        ("__init__.py", "e.py"),
        ("a.py", "__init__.py"),
    ]


def test_fan_out_fan_in_and_the_hub(tmp_path):
    imports = code_shape.analyze(_package(tmp_path, CYCLES))["imports"]
    assert imports["fan_out"] == {"a.py": 1, "b.py": 1, "c.py": 1, "d.py": 1, "e.py": 3, "f.py": 1}
    assert imports["fan_in"] == {"a.py": 2, "b.py": 1, "c.py": 2, "d.py": 1, "e.py": 1, "f.py": 1}
    assert imports["hub"] == {"module": "e.py", "fan_in": 1, "fan_out": 3}
    # a leaf imported by everyone is not the hub; the module between them is
    package = _package(
        tmp_path / "hub",
        {
            "errors.py": "",
            "core.py": "from pkg import errors\n",
            "x.py": "from pkg import core, errors\n",
            "y.py": "from pkg import core, errors\n",
            "top.py": "from pkg import core, errors, x, y\n",
        },
    )
    hub = code_shape.analyze(package)["imports"]["hub"]
    assert hub == {"module": "core.py", "fan_in": 3, "fan_out": 1}


def test_a_package_without_cycles_reports_none(tmp_path):
    package = _package(tmp_path, {"a.py": "from pkg import b\n", "b.py": "import os\n"})
    imports = code_shape.analyze(package)["imports"]
    assert imports["cycles"] == [] and imports["cycle_count"] == 0
    assert imports["edges"][0]["from"] == "a.py" and imports["edge_count"] == 1


# ------------------------------------------------------------------- where settings are checked

CHECKS = {
    "checks.py": """
        import numbers

        def check_positive(value, name="value"):
            if value < 0:
                raise ValueError(name)

        def require_whole(value, name):
            if not _is_int(value):
                raise ValueError(name)

        def _is_int(value):
            return True

        def positive(value):
            return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0

        def loose(value):
            return isinstance(value, int)
    """,
    "m1.py": """
        from pkg.checks import check_positive, require_whole

        def build(x, n):
            check_positive(x, "x")
            require_whole(n, "n")
    """,
    "m2.py": """
        import subprocess

        from pkg import checks

        class Config:
            def validate(self):
                checks.check_positive(self.x)
                subprocess.check_output(["true"])

            def _check_inside(self):
                pass

            def __post_init__(self):
                self._check_inside()
    """,
    "m3.py": """
        from pkg.m2 import Config

        def run(config: Config):
            config.validate()
            if isinstance(config.n, bool) or not isinstance(config.n, int):
                raise ValueError("n")
    """,
    # a check of the same name, its own: checks.check_positive(...) is not this one
    "m4.py": """
        def check_positive(value):
            return value > 0

        def use():
            return check_positive(3)
    """,
}


def test_check_functions_are_reported_with_their_call_sites(tmp_path):
    checks = code_shape.analyze(_package(tmp_path, CHECKS))["checks"]
    defined = [(d["module"], d["name"]) for d in checks["definitions"]]
    assert defined == [
        ("checks.py", "check_positive"),
        ("checks.py", "require_whole"),
        ("m2.py", "Config.validate"),
        ("m4.py", "check_positive"),
    ]
    assert checks["definition_count"] == 4 and checks["defining_module_count"] == 3
    sites = [(c["module"], c["caller"], c["callee"], c["defined_in"]) for c in checks["calls"]]
    assert sites == [
        ("m1.py", "build", "check_positive", ["checks.py"]),
        ("m1.py", "build", "require_whole", ["checks.py"]),
        ("m2.py", "Config.validate", "check_positive", ["checks.py"]),  # subprocess's is not one
        ("m3.py", "run", "validate", ["m2.py"]),
        ("m4.py", "use", "check_positive", ["m4.py"]),
    ]
    assert checks["call_count"] == 5
    assert checks["calling_modules"] == ["m1.py", "m2.py", "m3.py", "m4.py"]
    assert checks["calling_module_count"] == 4
    assert checks["by_function"]["checks.py:check_positive"] == {
        "calls": 2,
        "calling_modules": ["m1.py", "m2.py"],
    }
    assert checks["by_function"]["m4.py:check_positive"] == {
        "calls": 1,
        "calling_modules": ["m4.py"],
    }
    assert checks["by_function"]["m2.py:Config.validate"]["calls"] == 1
    assert [(d["module"], d["name"]) for d in checks["private_definitions"]] == [
        ("m2.py", "Config._check_inside")
    ]
    assert [c["caller"] for c in checks["private_calls"]] == ["Config.__post_init__"]


def test_the_setting_each_call_checks_and_those_checked_in_several_modules(tmp_path):
    checks = code_shape.analyze(_package(tmp_path, CHECKS))["checks"]
    # "x" by its string in m1 and by its argument, self.x, in m2
    assert checks["settings"]["x"] == {
        "sites": 2,
        "modules": ["m1.py", "m2.py"],
        "checks": ["check_positive"],
    }
    assert checks["settings"]["n"]["modules"] == ["m1.py"]
    assert checks["settings"]["positive"]["modules"] == ["m4.py"]  # by the check's name
    assert checks["settings_in_several_modules"] == ["x"]


def test_whole_number_tests_by_name_and_by_body(tmp_path):
    checks = code_shape.analyze(_package(tmp_path, CHECKS))["checks"]
    found = {(w["module"], w["name"]): w["by"] for w in checks["whole_number_tests"]}
    assert found == {
        ("checks.py", "require_whole"): "name",
        ("checks.py", "_is_int"): "name",
        ("checks.py", "positive"): "body",
        ("m3.py", "run"): "body",  # the test spelled the other way round
    }
    assert checks["whole_number_test_count"] == 4


# ----------------------------------------------------------------------------- latent type

LATENT = """
    PRIORS = ("normal", "mixture", "vamp", "hyperspherical")  # a tuple, tested nowhere
    NOTE = "spherical latents"  # nor is a string


    class Model:
        def __init__(self, prior="normal", spherical=False):
            self.spherical = prior == "hyperspherical"                # 1 compare
            if self.spherical:                                        # 2 truth
                pass
            width = 1 if self.spherical else 3                        # 3 truth
            if prior in ("mixture", "vamp"):                          # 4 compare
                pass
            if not self.spherical and width > 2:                      # 5 truth
                pass
            make(spherical=self.spherical)                            # 6 keyword
            if self.prior_name != "Normal":                           # 7 compare
                pass
            while is_spherical(prior):                                # 8 truth
                break
            assert isinstance(prior, PowerSpherical)                  # 9 isinstance
            match prior:
                case "vamp":                                          # 10 case
                    pass
            kinds = [p for p in PRIORS if spherical]                  # 11 truth
            if width == 3:                                            # not about the latent
                pass
"""


def test_latent_type_test_sites_are_counted_per_module(tmp_path):
    package = _package(
        tmp_path,
        {
            "model.py": LATENT,
            "other.py": "def f(prior):\n    return prior == 'vamp'\n",
            "none.py": "def g(kind):\n    return kind == 'bernoulli'\n",
        },
    )
    latent = code_shape.analyze(package)["latent_tests"]
    assert latent["per_module"] == {"model.py": 11, "other.py": 1}
    assert latent["total"] == 12 and latent["modules"] == ["model.py", "other.py"]
    assert latent["module_count"] == 2
    assert latent["by_kind"] == {"case": 1, "compare": 4, "isinstance": 1, "keyword": 1, "truth": 5}
    lines = [site["line"] for site in latent["sites"]["model.py"]]
    assert lines == sorted(lines) and len(set(lines)) == 11


# ------------------------------------------------------------------ global state, main, JSON


def test_touches_keep_their_shape(tmp_path):
    package = _package(
        tmp_path,
        {
            "a.py": "import torch\n\n\ndef f():\n    torch.manual_seed(0)  # torch.seed() too\n",
            "sub/b.py": "import pyro\n\npyro.get_param_store().scope()\n",
        },
    )
    result = code_shape.analyze(package)
    assert result["touches"] == [
        ("a.py", 5, "torch.manual_seed"),
        ("sub/b.py", 3, "pyro.get_param_store"),
    ]
    assert result["touch_modules"] == ["a.py", "sub/b.py"]


def test_main_prints_every_section_and_writes_the_result_as_json(tmp_path, capsys):
    package = _package(tmp_path, {**CYCLES, **CHECKS, "model.py": LATENT})
    out = tmp_path / "shape.json"
    result = code_shape.main(["--package", str(package), "--json", str(out), "--top", "2"])
    printed = capsys.readouterr().out
    for heading in (
        "function bodies over 50 lines",
        "modules over 600 lines",
        "import cycles",
        "import fan-out and fan-in",
        "where settings are checked",
        "where the latent type is tested",
        "global RNG and param store",
    ):
        assert f"== {heading} " in printed
    assert "b.py -> a.py (line 5)  [function]" in printed
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))


# ------------------------------------------------------------------------- the real package

INT_FIELDS = {
    "functions": ["limit", "count", "over_limit"],
    "modules": ["limit", "count", "over_limit", "total_lines"],
    "imports": [
        "edge_count",
        "function_level_edge_count",
        "cycle_count",
        "import_time_cycle_count",
    ],
    "checks": [
        "definition_count",
        "defining_module_count",
        "call_count",
        "calling_module_count",
        "whole_number_test_count",
    ],
    "latent_tests": ["total", "module_count"],
}


def test_the_report_on_pyro_vae_has_every_measure(capsys):
    result = code_shape.main([])
    assert capsys.readouterr().out.count("\n== ") == 7
    assert isinstance(result["module_count"], int) and result["module_count"] > 0
    for section, fields in INT_FIELDS.items():
        for field in fields:
            assert type(result[section][field]) is int, (section, field)
    functions = result["functions"]
    assert type(functions["longest"]["lines"]) is int
    assert functions["over_limit"] == len(functions["over"])
    assert all(f["lines"] > functions["limit"] for f in functions["over"])
    assert result["modules"]["over_limit"] == len(result["modules"]["over"])
    imports = result["imports"]
    assert imports["excluded"] == "__init__.py" and imports["cycle_count"] == len(imports["cycles"])
    for cycle in imports["cycles"]:
        assert cycle["size"] == len(cycle["modules"]) >= 2
        assert all(type(e["function_level"]) is bool for e in cycle["edges"])
    assert set(imports["fan_in"]) == set(imports["fan_out"])
    assert all(type(n) is int for n in [*imports["fan_in"].values(), *imports["fan_out"].values()])
    assert imports["hub"]["module"] in imports["fan_in"]
    checks = result["checks"]
    assert checks["definition_count"] == len(checks["definitions"])
    assert all(
        {"module", "caller", "callee", "defined_in", "line"} <= set(c) for c in checks["calls"]
    )
    latent = result["latent_tests"]
    assert latent["total"] == sum(latent["per_module"].values())
    assert all(type(n) is int for n in latent["per_module"].values())
    assert all(len(t) == 3 and type(t[1]) is int for t in result["touches"])


@pytest.mark.parametrize("argv", [["--top", "1"], ["--max-function-lines", "1000"]])
def test_the_real_report_takes_its_flags(argv, capsys):
    result = code_shape.main(argv)
    capsys.readouterr()
    if "--max-function-lines" in argv:
        assert result["functions"]["over_limit"] == 0
