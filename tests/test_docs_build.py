"""The docs' build scripts: the site check catches what it must, the gallery covers every example.

``docs_build/check_site.py`` runs in CI on the built site; here it runs on small hand-written
pages, each with one fault it must report, and on a clean page it must pass. The scripts use
the standard library (and ``griffe``, from the docs extra, for the docstring rewrite).
"""

import json
import sys
from pathlib import Path

import pytest

DOCS_BUILD = Path(__file__).resolve().parents[1] / "docs_build"
sys.path.insert(0, str(DOCS_BUILD))

import check_site  # noqa: E402
import gallery  # noqa: E402

HEAD = (
    '<script src="javascripts/mathjax-config.js"></script>'
    '<script src="assets/mathjax/tex-mml-chtml.js"></script>'
)
CLEAN = (
    '<p>inline <span class="arithmatex">\\(\\mathbb{E}_q[\\log p(x \\mid z)]\\)</span>, and</p>'
    '<div class="arithmatex">\\[\\mathrm{KL} = -\\frac{1}{2} \\sum_j \\left(1 + \\log \\sigma_j^2'
    "\\right)\\]</div>"
    "<pre><code>$$ \\alpha $$ and \\(x\\) in code are code</code></pre>"
    "<p>it costs $5 or $10, and <code>$\\beta$</code></p>"
    '<img src="images/figure.png" alt="a figure">'
)


def _site(tmp_path: Path, body: str, head: str = HEAD) -> Path:
    site = tmp_path / "site"
    for name in ("javascripts/mathjax-config.js", "assets/mathjax/tex-mml-chtml.js"):
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("//")
    (site / "images").mkdir()
    (site / "images" / "figure.png").write_bytes(b"png")
    (site / "index.html").write_text(f"<html><head>{head}</head><body>{body}</body></html>")
    return site


def _problems(tmp_path: Path, body: str, head: str = HEAD) -> list[str]:
    site = _site(tmp_path, body, head)
    return check_site.check_page(site, site / "index.html")[0]


def test_a_clean_page_passes(tmp_path):
    assert _problems(tmp_path, CLEAN) == []
    site = _site(tmp_path / "again", CLEAN)
    assert check_site.main([str(site)]) == 0


@pytest.mark.parametrize(
    "body, found",
    [
        ("<p>$$ x^2 $$</p>", "$$"),
        ("<p>\\(x^2\\)</p>", "\\( or \\)"),
        ("<p>\\[x^2\\]</p>", "\\[ or \\]"),
        ("<p>\\begin{aligned} a &amp;= b \\end{aligned}</p>", "\\begin or \\end"),
        ("<p>the rate $\\alpha$ of</p>", "$...$ with a LaTeX command"),
        ("<p>.. math::</p>", "reST math"),
        ('<span class="arithmatex">\\(\\frac{a}{b\\)</span>', "a { with no }"),
        ('<span class="arithmatex">\\(\\left( a\\)</span>', "\\left and \\right"),
        ('<div class="arithmatex">\\(x\\)</div>', "is not one \\[...\\]"),
        ('<span class="arithmatex">\\(a\\) and \\(b\\)</span>', "another formula's delimiters"),
        ('<img src="images/missing.png">', "no such file"),
        ('<img src="https://example.org/a.png">', "off the site"),
        ('<script src="https://cdn.example.org/mathjax.js"></script>', "off the site"),
    ],
)
def test_each_fault_is_reported(tmp_path, body, found):
    problems = _problems(tmp_path, CLEAN + body)
    assert len(problems) == 1 and found in problems[0], problems
    site = _site(tmp_path / "again", CLEAN + body)
    assert check_site.main([str(site)]) == 1


def test_formulas_need_mathjax_loaded_after_its_configuration(tmp_path):
    problems = _problems(tmp_path, CLEAN, head="")
    assert len(problems) == 2 and all("does not load" in p for p in problems), problems
    backwards = (
        '<script src="assets/mathjax/tex-mml-chtml.js"></script>'
        '<script src="javascripts/mathjax-config.js"></script>'
    )
    problems = _problems(tmp_path / "again", CLEAN, head=backwards)
    assert len(problems) == 1 and "before its configuration" in problems[0], problems


def test_the_docstring_math_becomes_markdown_math():
    griffe_math = pytest.importorskip("griffe_math", exc_type=ImportError)  # needs griffe
    text = (
        "Intro with :math:`\\sigma^2`.\n\n"
        ".. math::\n\n"
        "    \\log p(x) \\approx \\log \\frac{1}{K}\n"
        "        \\sum_k w_k\n\n"
        "    a = b\n\n"
        "after it.\n"
    )
    assert griffe_math.rewrite(text) == (
        "Intro with $\\sigma^2$.\n\n"
        "$$\n\\log p(x) \\approx \\log \\frac{1}{K}\n    \\sum_k w_k\n$$\n\n"
        "$$\na = b\n$$\n\n"
        "after it.\n"
    )


def test_the_gallery_knows_every_example():
    assert gallery.unknown_examples() == []
    names = {p.stem for p in gallery.EXAMPLES.glob("*.py")}
    assert {e.name for e in gallery.GALLERY} == names


def test_an_example_docstring_as_markdown():
    text = (
        "Trains it, then draws::\n\n    python examples/x.py --quick\n\nSee :func:`pyro_vae.fit`."
    )
    markdown = gallery.rest_to_markdown(text)
    assert "Trains it, then draws:\n\n```bash\npython examples/x.py --quick\n```" in markdown
    assert "[`fit`][pyro_vae.train.fit]" in markdown  # the package re-exports it


def test_gallery_pages_show_only_figures_that_were_made(tmp_path):
    pages, figures = gallery.site_files(tmp_path)  # no run: a page each, no figure
    assert set(pages) == {"gallery/index.md"} | {f"gallery/{e.name}.md" for e in gallery.GALLERY}
    assert figures == {} and "Not run for this build" in pages["gallery/train_mnist.md"]

    (tmp_path / "train_mnist").mkdir()
    (tmp_path / "train_mnist" / "manifold.png").write_bytes(b"png")
    entry = {
        "mode": "quick",
        "command": "python examples/train_mnist.py --quick --out OUT",
        "returncode": 0,
        "seconds": 3.0,
        "output": "test ELBO -198.75\n",
        "stderr_tail": "",
        "figures": ["manifold.png"],  # latent_scatter.png was not made
        "problems": [],
        "source_sha256": gallery.source_hash("train_mnist"),
        "date": "2026-01-01",
    }
    (tmp_path / gallery.MANIFEST).write_text(json.dumps({"train_mnist": entry}))
    pages, figures = gallery.site_files(tmp_path)
    assert figures == {"gallery/train_mnist/manifold.png": tmp_path / "train_mnist/manifold.png"}
    page = pages["gallery/train_mnist.md"]
    assert "(train_mnist/manifold.png)" in page and "latent_scatter.png)" not in page
    assert "test ELBO -198.75" in page and "quick mode" in page
