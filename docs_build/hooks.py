"""MkDocs hook: what the site needs beyond ``docs/``, made at build time.

- The CLI reference is the ``--help`` text of every command (``<!-- cli-help -->`` in
  ``docs/cli.md``).
- MathJax is copied into the site (``assets/mathjax/``) from the ``django-static-mathjax``
  package, a pip package that holds MathJax 3's browser files.
- The gallery's pages and figures (``gallery/``) come from the folder that
  ``docs_build/gallery.py`` fills (``build/gallery``, or ``$PYRO_VAE_GALLERY_DIR``).

How the math is rendered, and why. Pages write LaTeX between ``$ $`` and ``$$ $$``; docstrings
write reST's ``.. math::`` (rewritten by ``docs_build/griffe_math.py``). pymdownx.arithmatex
puts each formula in an element of class ``arithmatex``, and MathJax 3 typesets those in the
reader's browser from the copy shipped with the site, so a built site shows its math with no
network at all, served or opened from disk. The other route was converting LaTeX to MathML at
build time with a pure-Python converter (``latex2mathml``), with no JavaScript: tried here, it
leaves the quality to the reader's fonts, and with no OpenType math font installed (a bare
Debian Chromium) sums, fractions and brackets do not stretch, ``\\log p`` runs together and
``\\arg\\max`` and ``aligned`` are not understood. MathJax brings its own fonts, reads all of the
LaTeX the pages use, and writes MathML beside its rendering for screen readers. KaTeX at build
time needs node.js, which CI does not have. ``docs_build/check_site.py`` checks the built HTML
for math left outside the arithmatex elements, and ``docs_build/screenshots.py`` for formulas
MathJax could not read, in a real browser.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from importlib import metadata
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gallery  # noqa: E402  (docs_build/gallery.py, beside this file)

MARKER = "<!-- cli-help -->"
MATHJAX_DIST = "django-static-mathjax"
MATHJAX_SITE = "assets/mathjax"
# The one MathJax bundle the pages load, and the files it loads on demand: TeX extensions
# (autoload), the CHTML output's fonts, the menu's accessibility tools. Not the other bundles.
MATHJAX_KEEP = ("tex-mml-chtml.js", "input/", "output/chtml", "a11y/", "sre/", "ui/")


def _help(argv: list[str]) -> str:
    from pyro_vae.cli import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return out.getvalue()


def on_page_markdown(markdown: str, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    from pyro_vae.cli import build_parser

    commands = list(build_parser()._subparsers._group_actions[0].choices)
    sections = [f"```\n{_help([])}```"]
    for command in commands:
        sections.append(f"## pyro-vae {command}\n\n```\n{_help([command])}```")
    return markdown.replace(MARKER, "\n\n".join(sections))


def mathjax_files() -> dict[str, Path]:
    """``{site path: file}`` for the MathJax files the site ships, with MathJax's licence."""
    try:
        dist = metadata.distribution(MATHJAX_DIST)
    except metadata.PackageNotFoundError:
        raise PluginError(
            f"the docs need {MATHJAX_DIST} (MathJax's files): pip install -e '.[docs]'"
        ) from None
    root = Path(dist.locate_file("mathjax/static/mathjax"))
    es5 = root / "es5"
    if not (es5 / MATHJAX_KEEP[0]).is_file():
        raise PluginError(f"{MATHJAX_DIST} has no {MATHJAX_KEEP[0]} in {es5}")
    files = {f"{MATHJAX_SITE}/LICENSE": root / "LICENSE"}
    for path in sorted(es5.rglob("*")):
        rel = path.relative_to(es5).as_posix()
        if path.is_file() and rel.startswith(MATHJAX_KEEP):
            files[f"{MATHJAX_SITE}/{rel}"] = path
    return files


def gallery_folder(config) -> Path:
    folder = os.environ.get(gallery.GALLERY_ENV)
    if folder:
        return Path(folder).resolve()
    return Path(config.config_file_path).resolve().parent / "build" / "gallery"


def on_files(files: Files, config) -> Files:
    for src_uri, path in mathjax_files().items():
        files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    pages, figures = gallery.site_files(gallery_folder(config))
    for src_uri, content in pages.items():
        files.append(File.generated(config, src_uri, content=content))
    for src_uri, path in figures.items():
        files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    return files
