"""Check a built site: no math left unrendered, every image and script a page loads present.

    mkdocs build --strict --site-dir SITE && python docs_build/check_site.py SITE

Fails (exit code 1, one line per problem, ``page: problem``) when a page's text, outside code,
holds raw LaTeX that nothing will typeset: ``$$``, ``\\(``, ``\\)``, ``\\[``, ``\\]``,
``\\begin{``/``\\end{``, a ``$...$`` with a backslash command in it, or reST's ``.. math::`` and
``:math:``. Math the site renders lives in elements of class ``arithmatex`` (pymdownx.arithmatex,
typeset by MathJax in the browser): each must hold exactly one ``\\(...\\)`` or ``\\[...\\]``
with balanced braces, ``\\left``/``\\right`` and ``\\begin``/``\\end``, and a page that has any
must load the MathJax configuration and then the MathJax bundle shipped with the site. Every
``<img>``, ``<script>`` and ``<link>`` a page loads must be a file of the site: a reference that
is missing, or that points off the site (fetched at view time), is a problem. Standard library
only.
"""

from __future__ import annotations

import argparse
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

MATHJAX_CONFIG = "javascripts/mathjax-config.js"
MATHJAX_BUNDLE = "assets/mathjax/tex-mml-chtml.js"
SKIPPED_TEXT = {"pre", "code", "script", "style", "textarea", "kbd", "samp"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip

RAW_MATH = [
    (re.compile(r"\$\$"), "$$"),
    (re.compile(r"\\\(|\\\)"), "\\( or \\)"),
    (re.compile(r"\\\[|\\\]"), "\\[ or \\]"),
    (re.compile(r"\\(?:begin|end)\{"), "\\begin or \\end"),
    (re.compile(r"(?<![\\$])\$[^$\n]*\\[A-Za-z]+[^$\n]*\$"), "$...$ with a LaTeX command"),
    (re.compile(r"\.\. math::|:math:`"), "reST math"),
]


class _Page(HTMLParser):
    """Collects a page's visible text outside code, its formulas and what it loads."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, skips text, is a formula)
        self.text: list[tuple[int, str]] = []  # (line, text)
        self.formulas: list[tuple[int, str, str]] = []  # (line, tag, TeX)
        self.loads: list[tuple[int, str, str]] = []  # (line, tag, url)
        self._formula: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        line = self.getpos()[0]
        if tag == "img" and attrs.get("src"):
            self.loads.append((line, tag, attrs["src"]))
        elif tag == "script" and attrs.get("src"):
            self.loads.append((line, tag, attrs["src"]))
        elif tag == "link" and attrs.get("href"):
            self.loads.append((line, tag, attrs["href"]))
        if tag in VOID:
            return
        classes = (attrs.get("class") or "").split()
        formula = "arithmatex" in classes and self._formula is None
        if formula:
            self._formula = []
        skips = tag in SKIPPED_TEXT or any(skip for _, skip, _ in self.stack)
        self.stack.append((tag, skips, formula))

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack and self.stack[-1][0] == tag:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        # close up to the matching tag (HTML allows some end tags to be left out)
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                for _, _, formula in self.stack[i:]:
                    if formula and self._formula is not None:
                        self.formulas.append((self.getpos()[0], tag, "".join(self._formula)))
                        self._formula = None
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        if self._formula is not None:
            self._formula.append(data)
        elif not (self.stack and self.stack[-1][1]):
            self.text.append((self.getpos()[0], data))


def _balanced(tex: str) -> str | None:
    """What is unbalanced in ``tex``, or None."""
    body = re.sub(r"\\[{}]", "", tex)  # escaped braces are characters
    depth = 0
    for char in body:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return "a } with no {"
    if depth:
        return "a { with no }"
    if len(re.findall(r"\\left\b", tex)) != len(re.findall(r"\\right\b", tex)):
        return "\\left and \\right do not pair"
    open_environments = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+\*?)\}", tex):
        if kind == "begin":
            open_environments.append(name)
        elif not open_environments or open_environments.pop() != name:
            return f"\\end{{{name}}} does not close the last \\begin"
    if open_environments:
        return f"\\begin{{{open_environments[-1]}}} is not closed"
    return None


def check_formula(tag: str, tex: str) -> str | None:
    """Why an arithmatex element's content would not typeset as one formula, or None."""
    tex = tex.strip()
    inline = re.fullmatch(r"\\\((.*)\\\)", tex, flags=re.S)
    display = re.fullmatch(r"\\\[(.*)\\\]", tex, flags=re.S)
    match = inline if tag == "span" else display
    if not match:
        want = "\\(...\\)" if tag == "span" else "\\[...\\]"
        return f"formula is not one {want}: {tex[:60]!r}"
    inner = match[1]
    if re.search(r"\\\(|\\\)|\\\[|\\\]|\$\$", inner):
        return f"formula holds another formula's delimiters: {tex[:60]!r}"
    if not inner.strip():
        return "empty formula"
    why = _balanced(inner)
    return f"{why} in {tex[:60]!r}" if why else None


def _local(site: Path, page: Path, url: str) -> Path | None:
    """The file a page-relative URL names, or None for one that leaves the site."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return None
    path = unquote(parts.path)
    if not path:
        return page
    target = (site / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
    return target.resolve()


def check_page(site: Path, page: Path) -> tuple[list[str], int, int]:
    """The problems of one page, its number of formulas and of files it loads."""
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    problems = []
    for line, text in parser.text:
        for pattern, what in RAW_MATH:
            match = pattern.search(text)  # one line per kind and paragraph is enough
            if match:
                around = text[max(0, match.start() - 20) : match.end() + 40].strip()
                problems.append(f"line {line}: unrendered math ({what}): {around!r}")
    for line, tag, tex in parser.formulas:
        why = check_formula(tag, tex)
        if why:
            problems.append(f"line {line}: {why}")
    scripts = []
    for line, tag, url in parser.loads:
        if url.startswith("data:"):
            continue
        target = _local(site, page, url)
        if target is None:
            problems.append(f"line {line}: <{tag}> loads {url} from off the site at view time")
        elif not target.is_file():
            problems.append(f"line {line}: <{tag}> {url}: no such file in the site")
        elif tag == "script":
            scripts.append(target.relative_to(site.resolve()).as_posix())
    if parser.formulas:
        for needed in (MATHJAX_CONFIG, MATHJAX_BUNDLE):
            if needed not in scripts:
                problems.append(f"has formulas but does not load {needed}")
        if all(s in scripts for s in (MATHJAX_CONFIG, MATHJAX_BUNDLE)) and scripts.index(
            MATHJAX_CONFIG
        ) > scripts.index(MATHJAX_BUNDLE):
            problems.append(f"loads {MATHJAX_BUNDLE} before its configuration")
    return problems, len(parser.formulas), len(parser.loads)


def pages(site: Path) -> list[Path]:
    return sorted(
        p for p in site.rglob("*.html") if p.relative_to(site).parts[0] not in ("assets", "search")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built site (mkdocs build --site-dir)")
    args = parser.parse_args(argv)
    found = pages(args.site)
    if not found:
        print(f"check_site: no pages in {args.site}")
        return 1
    failed = formulas = loads = 0
    for page in found:
        problems, n_formulas, n_loads = check_page(args.site, page)
        formulas += n_formulas
        loads += n_loads
        rel = page.relative_to(args.site).as_posix()
        for problem in problems:
            print(f"{rel}: {problem}")
        failed += bool(problems)
    print(
        f"check_site: {len(found)} pages, {formulas} formulas, {loads} images, scripts and "
        f"stylesheets; {failed} page(s) with problems"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
