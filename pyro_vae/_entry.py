"""The ``pyro-vae`` console script: a Ctrl-C while PyTorch and Pyro load is one line too."""

import sys


def main() -> int:
    try:
        from pyro_vae.cli import main as run
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130
    return run()
