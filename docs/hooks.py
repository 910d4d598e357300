"""MkDocs hook: the CLI reference is the ``--help`` text of every command, made at build time."""

import contextlib
import io

MARKER = "<!-- cli-help -->"


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
