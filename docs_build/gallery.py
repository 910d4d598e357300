"""The gallery: run every script in ``examples/`` and keep what it prints and draws for the docs.

    python docs_build/gallery.py --quick                          # about 80 s on 2 cores (CI)
    python docs_build/gallery.py --data-dir ../shared/data        # full runs, 15 to 25 minutes
    python docs_build/gallery.py --data-dir ../shared/data --only train_mnist frey_faces

Each example runs in a fresh process, in a scratch folder, with ``--out`` pointed there where it
takes one; the figures it promises (:data:`GALLERY`) are copied to ``OUT/<example>/`` and what it
printed, its command, its time and a hash of its source go to ``OUT/manifest.json``. ``OUT`` is
``build/gallery`` by default (ignored by git). ``mkdocs build`` (``docs_build/hooks.py``) reads
that folder, or the one in ``$PYRO_VAE_GALLERY_DIR``, and makes one page per example from the
script's docstring, the command, the output and the figures, plus an index page. A figure the
pages show exists only if this script made it; an example that fails, a promised figure that is
missing and a script in ``examples/`` that this table does not know each make it exit with 1.

Why the figures are made at build time and not committed: the pages then always show what the
code draws today (committed pictures go stale silently), the repository holds no second copy
of pictures that change with every run, and CI's quick run writes into a folder of its own,
so it never touches a tracked file. The price is that a site built after the quick run shows
quick-run pictures (one epoch on the bundled sample), and each page says so; the full run is
the command above. The study figures that the other pages quote (``docs/images/``) are committed
with the measured numbers beside them, each under the command that made it.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import html
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DEFAULT_OUT = ROOT / "build" / "gallery"
GALLERY_ENV = "PYRO_VAE_GALLERY_DIR"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Example:
    """One script of ``examples/`` and the figures it draws (paths under its ``--out``)."""

    name: str
    figures: dict[str, str] = field(default_factory=dict)  # path under --out -> caption
    quick_figures: tuple[str, ...] | None = None  # what --quick draws; None: all of them
    takes_out: bool = True

    def promised(self, quick: bool) -> list[str]:
        if quick and self.quick_figures is not None:
            return list(self.quick_figures)
        return list(self.figures)


GALLERY = (
    Example("quickstart", takes_out=False),
    Example(
        "train_mnist",
        {
            "manifold.png": "The learned 2-D manifold: the mean image E[x|z] decoded on a grid "
            "of latent points spaced by the prior's quantiles (Kingma & Welling, Figure 4).",
            "latent_scatter.png": "The guide's means of the test digits in the 2-D latent "
            "space, coloured by class.",
        },
    ),
    Example(
        "frey_faces",
        {
            "manifold.png": "The learned 2-D manifold of Frey Face: expression along one axis, "
            "pose along the other.",
            "samples.png": "Mean images of samples from the prior.",
        },
    ),
    Example("iwae_vs_elbo", takes_out=False),
    Example(
        "compare_estimators",
        {
            "variance.png": "Total variance of the encoder's and the decoder's gradient, per "
            "estimator, at initialization and after training (log scale for the encoder).",
            "training_curves.png": "Validation ELBO against steps and seconds, one model per "
            "estimator on the same budget.",
        },
    ),
    Example(
        "posterior_check",
        {
            "posterior_0.png": "Test image 0: the guide q(z|x) against NUTS samples of the "
            "true posterior p(z|x), in the four latent dimensions where NUTS spreads most.",
            "posterior_1.png": "Test image 1.",
            "posterior_2.png": "Test image 2.",
        },
        quick_figures=("posterior_0.png",),
    ),
    Example(
        "image_files",
        {
            "runs/png/samples.png": "Samples from the VAE trained on the folder of PNG files.",
            "runs/png/reconstructions.png": "Test images of the PNG folder over their "
            "reconstructions.",
            "runs/png/latent_scatter.png": "The test images' guide means, coloured by the "
            "class folder each image came from.",
        },
        quick_figures=(),  # the quick run trains with --no-plots
    ),
)


def figure_name(path: str) -> str:
    """Where a figure lands in the gallery folder: ``runs/png/samples.png`` -> ``samples.png``."""
    return Path(path).name


def source_hash(name: str) -> str:
    return hashlib.sha256((EXAMPLES / f"{name}.py").read_bytes()).hexdigest()


def unknown_examples() -> list[str]:
    known = {example.name for example in GALLERY}
    return sorted(p.stem for p in EXAMPLES.glob("*.py") if p.stem not in known)


def read_manifest(folder: Path) -> dict:
    """``{example name: entry}`` of the gallery in ``folder``; empty if it was never made."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


# ---------------------------------------------------------------------------------------------
# Running the examples


def run_example(example: Example, quick: bool, out: Path, scratch: Path, env: dict) -> dict:
    """Run one example; copy its figures to ``out/<name>/``; return its manifest entry."""
    argv = [f"examples/{example.name}.py", *(["--quick"] if quick else [])]
    work = scratch / example.name
    work.mkdir()
    extra = ["--out", str(work / "out")] if example.takes_out else []
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / argv[0]), *argv[1:], *extra],
        cwd=work,  # whatever an example writes beside --out stays in the scratch folder
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    target = out / example.name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    problems, figures = [], []
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        problems.append(f"exit code {done.returncode}: {last}")
    else:
        for path in example.promised(quick):
            made = work / "out" / path
            if made.is_file() and made.stat().st_size > 0:
                shutil.copyfile(made, target / figure_name(path))
                figures.append(path)
            else:
                problems.append(f"promised figure {path} was not written")
    return {
        "mode": "quick" if quick else "full",
        "command": " ".join(["python", *argv, *(["--out", "OUT"] if extra else [])]),
        "returncode": done.returncode,
        "seconds": round(seconds, 1),
        # the scratch folder's name means nothing to a reader
        "output": done.stdout.replace(str(work / "out"), "OUT").replace(str(work), "."),
        "stderr_tail": "\n".join(done.stderr.strip().splitlines()[-20:]),
        "figures": figures,
        "problems": problems,
        "source_sha256": source_hash(example.name),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each example's --quick mode")
    parser.add_argument(
        "--data-dir", help="where the data sets are (sets PYRO_VAE_DATA_DIR for the examples)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get(GALLERY_ENV, DEFAULT_OUT)),
        help=f"the gallery folder (default ${GALLERY_ENV}, else build/gallery)",
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these examples")
    args = parser.parse_args(argv)

    unknown = unknown_examples()
    if unknown:
        for name in unknown:
            print(f"gallery: examples/{name}.py is not in GALLERY (docs_build/gallery.py): add it")
        return 1
    chosen = [e for e in GALLERY if not args.only or e.name in args.only]
    missing = sorted(set(args.only or ()) - {e.name for e in GALLERY})
    if missing:
        print(f"gallery: no such example: {', '.join(missing)}")
        return 1

    env = dict(os.environ)
    if args.data_dir:
        env["PYRO_VAE_DATA_DIR"] = str(Path(args.data_dir).resolve())
    env.setdefault("MPLBACKEND", "Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(args.out) if args.only else {}
    failed = []
    with tempfile.TemporaryDirectory(prefix="pyro-vae-gallery-") as scratch:
        for example in chosen:
            entry = run_example(example, args.quick, args.out, Path(scratch), env)
            manifest[example.name] = entry
            status = "; ".join(entry["problems"]) or ", ".join(entry["figures"]) or "no figures"
            print(f"{example.name:<20} {entry['mode']:<5} {entry['seconds']:6.1f} s  {status}")
            if entry["problems"]:
                failed.append(example.name)
                if entry["stderr_tail"]:
                    print(textwrap.indent(entry["stderr_tail"], "    "))
    (args.out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if failed:
        print(f"gallery: {len(failed)} example(s) failed: {', '.join(failed)}")
        return 1
    print(f"gallery: {len(chosen)} examples in {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------
# The pages (called by docs_build/hooks.py at build time)

_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc):`~?([\w.]+)`")


def rest_to_markdown(text: str) -> str:
    """An example's docstring body (reST) as Markdown: literal blocks fenced, roles linked."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            out.append(_inline(head + ":" if head and not head.endswith(" ") else head))
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i][:1] in " \t"):
                block.append(lines[i])
                i += 1
            out += ["", "```bash", textwrap.dedent("\n".join(block)).strip("\n"), "```", ""]
            continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out).strip() + "\n"


def _canonical(target: str) -> str:
    """Where the API reference documents ``target``: ``pyro_vae.fit`` is
    ``pyro_vae.train.fit`` (the package re-exports it)."""
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
        return f"{obj.__module__}.{obj.__qualname__}"
    except (ImportError, AttributeError, ValueError):
        return target  # a module, or a name the build will report as unresolved


def _inline(line: str) -> str:
    line = _ROLE.sub(lambda m: f"[`{m[1].rsplit('.', 1)[-1]}`][{_canonical(m[1])}]", line)
    return line.replace("``", "`")


def _docstring(name: str) -> tuple[str, str]:
    """The example's title (its docstring's first line) and the rest, as Markdown."""
    doc = ast.get_docstring(ast.parse((EXAMPLES / f"{name}.py").read_text())) or name
    first, _, rest = doc.partition("\n")
    title = first.removeprefix("Example:").strip().rstrip(".")
    return title[:1].upper() + title[1:], rest_to_markdown(rest.strip())


def _fenced(text: str, lang: str = "text", indent: str = "") -> str:
    fence = "````" if "```" in text else "```"
    body = textwrap.indent(text.rstrip("\n"), indent) if text.strip() else f"{indent}(nothing)"
    return f"{indent}{fence}{lang}\n{body}\n{indent}{fence}"


def example_page(example: Example, entry: dict | None) -> str:
    """The Markdown of ``gallery/<name>.md``."""
    title, description = _docstring(example.name)
    source = (EXAMPLES / f"{example.name}.py").read_text()
    parts = [f"# {title}", f"`examples/{example.name}.py`", description]
    how = "python docs_build/gallery.py --quick"
    if entry is None:
        parts.append(
            '!!! note "Not run for this build"\n\n'
            f"    The output and figures of this example appear here once `{how}` (seconds) "
            "or `python docs_build/gallery.py --data-dir DIR` (the full runs) has made them; "
            "then build the site again."
        )
    else:
        parts.append("## What it printed")
        mode = (
            "in its quick mode (`--quick`: a short run that shows what the script draws, not "
            "what a trained VAE draws; the full run is "
            "`python docs_build/gallery.py --data-dir DIR`)"
            if entry["mode"] == "quick"
            else "in full"
        )
        parts.append(
            f"Run by `python docs_build/gallery.py` on {entry['date']} {mode}, as "
            f"`{entry['command']}`, in {entry['seconds']:.0f} seconds:"
        )
        if entry["source_sha256"] != source_hash(example.name):
            parts.append(
                '!!! warning "The script has changed since"\n\n'
                "    What follows comes from an earlier version of the script; "
                "`python docs_build/gallery.py` makes it again."
            )
        if entry["problems"]:
            problems = "; ".join(entry["problems"])
            parts.append(f'!!! failure "The run failed"\n\n    {problems}')
        parts.append(_fenced(entry["output"]))
        shown = [path for path in example.figures if path in entry["figures"]]
        if shown:
            parts.append("## Figures")
            for path in shown:
                caption = html.escape(example.figures[path])
                parts.append(
                    f'<figure markdown="span">\n'
                    f"  ![{example.name}: {figure_name(path)}]"
                    f"({example.name}/{figure_name(path)})\n"
                    f"  <figcaption>{caption} <code>{figure_name(path)}</code></figcaption>\n"
                    "</figure>"
                )
        elif example.figures:
            parts.append(
                "This run draws no figures; the full run draws "
                + ", ".join(f"`{figure_name(p)}`" for p in example.figures)
                + "."
            )
    parts.append(
        f'??? example "The script: examples/{example.name}.py"\n\n'
        + _fenced(source, "python", indent="    ")
    )
    return "\n\n".join(parts) + "\n"


def index_page(manifest: dict) -> str:
    """The Markdown of ``gallery/index.md``: one card per example."""
    modes = sorted({entry["mode"] for entry in manifest.values()})
    intro = [
        "# Gallery of the examples",
        "Every script in `examples/` as a page: what it does, how to run it, what it printed "
        "and the figures it drew, made by running it when the site was built:",
        "```bash\n"
        "python docs_build/gallery.py --quick       # about 80 s on 2 cores\n"
        "python docs_build/gallery.py --data-dir ../shared/data    # or: the full runs\n"
        "mkdocs build\n"
        "```",
    ]
    if not manifest:
        intro.append("This build ran no example yet: run one of the commands above first.")
    elif modes == ["quick"]:
        intro.append(
            "The figures of this build come from the **quick** runs (`--quick`: an epoch or "
            "three, mostly on the bundled sample), enough to show what each script draws, not "
            "what a trained VAE draws. "
            "The trained model's pictures are on the [home page](../index.md) and the study "
            "pages, each with its command."
        )
    cards = []
    for example in GALLERY:
        title, _ = _docstring(example.name)
        entry = manifest.get(example.name)
        figures = [p for p in example.figures if entry and p in entry["figures"]]
        picture = (
            f"[![{example.name}]({example.name}/{figure_name(figures[0])})]({example.name}.md)\n  "
            if figures
            else ""
        )
        cards.append(
            f'<figure markdown="span">\n  {picture}<figcaption markdown>'
            f"[`{example.name}.py`]({example.name}.md): {title}</figcaption>\n</figure>"
        )
    return (
        "\n\n".join(intro)
        + '\n\n<div class="figure-grid thumbnails" markdown>\n\n'
        + ("\n\n".join(cards) + "\n\n</div>\n")
    )


def site_files(folder: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """The gallery's pages (``{docs path: Markdown}``) and figures (``{docs path: file}``)."""
    manifest = read_manifest(folder)
    pages = {"gallery/index.md": index_page(manifest)}
    figures = {}
    for example in GALLERY:
        entry = manifest.get(example.name)
        pages[f"gallery/{example.name}.md"] = example_page(example, entry)
        for path in entry["figures"] if entry else ():
            name = figure_name(path)
            figures[f"gallery/{example.name}/{name}"] = folder / example.name / name
    return pages, figures


if __name__ == "__main__":
    sys.exit(main())
