"""The ``pyro-vae`` console script: a Ctrl-C while PyTorch and Pyro load is one line too."""

import contextlib
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
        for stream in (sys.stdout, sys.stderr):  # None where it was closed (`>&-`)
            if stream is not None:
                with contextlib.suppress(Exception):  # a reader gone: nothing more to say
                    stream.flush()
        os._exit(code)
    return code
