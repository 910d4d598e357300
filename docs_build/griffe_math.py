"""Griffe extension: the reStructuredText of pyro_vae's docstrings, as the site's Markdown.

pyro_vae's docstrings are Sphinx-style reST; math in them is written as reST writes it::

    .. math::

        \\log p(x) \\approx \\log \\frac{1}{K} \\sum_{k=1}^K \\frac{p(x, z_k)}{q(z_k|x)}

or inline as :math:`\\sigma^2`. Griffe's Sphinx parser keeps both as plain text, and Markdown
would show the directive as a paragraph and the formula as a code block. Before the docstring
is parsed, this extension rewrites each ``.. math::`` block as ``$$ ... $$`` (one per
blank-line-separated equation, as Sphinx numbers them) and each ``:math:`...``` as ``$...$``;
pymdownx.arithmatex and MathJax then render them as they render the pages' math
(``mkdocs.yml``). The docstrings themselves stay as Sphinx reads them. A literal block's
``text::`` reads ``text:``, as Sphinx shows it.

Cross-reference roles (:class:`ConfigError`, :func:`pyro_vae.isolation.isolated`, ...), which
Markdown would show as ``:class:`` followed by code, become links to the API reference when the
name resolves, in the docstring's own scope, to an object the reference shows, and code
otherwise (mkdocs-autorefs' optional references: never a broken link, never a build warning).

Loaded by mkdocstrings from ``mkdocs.yml`` (``options: extensions:``).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from griffe import Extension, Object

_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<inline>\S.*)?$")
_ROLE = re.compile(r":math:`(?P<tex>[^`]+)`")
_XREF = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`~?(?P<name>[\w.]+)`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _equations(lines: list[str]) -> list[list[str]]:
    """The directive's body split into equations at blank lines, each dedented."""
    body = [line for line in lines if not re.match(r"^\s*:\w[\w-]*:", line)]  # :label: etc.
    margin = min((_indent(line) for line in body if line.strip()), default=0)
    equations: list[list[str]] = [[]]
    for line in body:
        if line.strip():
            equations[-1].append(line[margin:].rstrip())
        elif equations[-1]:
            equations.append([])
    return [eq for eq in equations if eq]


def rewrite(text: str) -> str:
    """``text`` with every ``.. math::`` block as ``$$`` blocks and ``:math:`` as ``$...$``."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if not match:
            out.append(_ROLE.sub(lambda m: f"${m['tex']}$", lines[i]))
            i += 1
            continue
        indent = match["indent"]
        block = [match["inline"]] if match["inline"] else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
            block.append(lines[i])
            i += 1
        if out and out[-1].strip():
            out.append("")
        for equation in _equations(block):
            out += [f"{indent}$$", *(f"{indent}{line}" for line in equation), f"{indent}$$", ""]
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def literal_markers(text: str) -> str:
    """``text`` with reST's ``::`` before an indented literal block as Markdown shows it: the
    block is already a code block in Markdown, and ``text::`` reads ``text:``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::") or line.lstrip().startswith(".."):
            continue
        following = next((later for later in lines[i + 1 :] if later.strip()), "")
        if _indent(following) > _indent(line):
            head = line.rstrip()[:-2]
            lines[i] = head.rstrip() if head.endswith(" ") or not head.strip() else head + ":"
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def _target(obj: Object, name: str) -> str:
    """The full path of ``name`` as written in ``obj``'s docstring, re-exports followed."""
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head) + (f".{rest}" if rest else "")
    except Exception:  # noqa: BLE001  (griffe's NameResolutionError, or an alias it cannot follow)
        path = name
    root = obj.package
    try:
        found = root[path.removeprefix(f"{root.path}.")] if path.startswith(root.path) else None
        return found.target_path if found is not None and found.is_alias else path
    except Exception:  # noqa: BLE001  (not in the package, or an alias to elsewhere)
        return _imported(path)


def _imported(path: str) -> str:
    """Where Python finds ``path``: a name the package exports lazily (``pyro_vae.fit``,
    through its ``__getattr__``) is ``pyro_vae.train.fit``."""
    module, _, name = path.rpartition(".")
    try:
        value = getattr(importlib.import_module(module), name)
        return f"{value.__module__}.{value.__qualname__}"
    except Exception:  # noqa: BLE001  (not importable, or not a class or function)
        return path


def link_roles(obj: Object, text: str) -> str:
    """``text`` with each cross-reference role as an optional autoref to its target."""

    def link(match: re.Match) -> str:
        name = match["name"]
        shown = name.rsplit(".", 1)[-1] if match[0].count("~") else name
        return f'<autoref identifier="{_target(obj, name)}" optional><code>{shown}</code></autoref>'

    return _XREF.sub(link, text)


def _walk(obj: Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class ReSTMarkup(Extension):
    """Rewrites the reST math and cross-references of every docstring before it is parsed."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None and (
            ":math:" in docstring.value or ".. math::" in docstring.value
        ):
            docstring.value = rewrite(docstring.value)
        if docstring is not None and "::" in docstring.value:
            docstring.value = literal_markers(docstring.value)

    def on_package(self, *, pkg: Object, **kwargs: Any) -> None:
        # names resolve only once the whole package is loaded
        for obj in _walk(pkg):
            if obj.docstring is not None and _XREF.search(obj.docstring.value):
                obj.docstring.value = link_roles(obj, obj.docstring.value)

    # Griffe 1 (what Python 3.10 resolves) names the same event on_package_loaded; the rewrite
    # finds nothing left to do if both run.
    on_package_loaded = on_package
