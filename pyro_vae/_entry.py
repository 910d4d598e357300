"""The ``pyro-vae`` console script: a Ctrl-C while PyTorch and Pyro load is one line too."""

import os
import sys


def main() -> int:
    try:
        from pyro_vae.cli import main as run
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130
    code = run()
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        # A process of a torchrun launch has left its process group and written what it
        # writes. It ends here, without the interpreter's teardown: gloo's threads, destroyed
        # there (behind DDP's reducer), were seen to abort a process that had finished its
        # work ("terminate called without an active exception", SIGABRT) now and then.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
