"""The README is a promise: its Python example runs as written, its commands match the CLI."""

import re
from pathlib import Path

from pyro_vae.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_python_example_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "test ELBO" in out and "one step, ELBO" in out


def test_setup_commands_name_real_commands_and_extras():
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    assert len(commands) == 2
    assert "pip install ." in commands[0] and "pyro-vae train" in commands[0]
    assert 'pip install -e ".[test]"' in commands[1] and "pytest" in commands[1]
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'test = ["pytest' in pyproject and 'pyro-vae = "pyro_vae._entry:main"' in pyproject
    # the main command's flags parse
    build_parser().parse_args(["train", "--out", "runs/mnist"])


def test_relative_links_and_images_exist():
    """Every relative link and image of the README names a file or folder of the repository
    (GitHub resolves them from the repository root)."""
    root = Path(__file__).resolve().parents[1]
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    relative = [t for t in targets if "://" not in t]
    assert "docs/results.md" in relative and any(t.startswith("docs/images/") for t in relative)
    missing = [t for t in relative if not (root / t).exists()]
    assert missing == [], missing
