"""Build the site and open every page in headless Chromium, as a reader would; save screenshots.

    python docs_build/screenshots.py SHOTS                # build, then every page into SHOTS/
    python docs_build/screenshots.py SHOTS --site site    # an already built site
    python docs_build/screenshots.py SHOTS --only index.html theory.html --dark

Needs Chromium (Debian: ``apt-get install chromium``). The site is served on 127.0.0.1 by
Python's ``http.server``, as any static server would (opened from disk the pages, math and
figures work too, but not the search box), and each page is opened at 1280 pixels wide, after
MathJax has typeset it and the fonts have loaded, and saved as ``SHOTS/<page>-1.png``,
``-2.png``, ... from top to bottom, 1600 pixels each. ``--dark`` adds the dark palette. Run
the gallery first (``python docs_build/gallery.py --quick``) for a gallery with figures.

While the page is open the script also checks, and exits with 1 listing the page, for: a
formula MathJax could not read (an element with ``data-mjx-error``), an ``arithmatex`` element
MathJax did not typeset, an image that did not load, a JavaScript error, and any request that
leaves the machine (a site that fetches nothing asks only the local server). Chromium is
driven through its DevTools protocol over a pipe, with the standard library only.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH, VIEWPORT, SLICE = 1280, 1000, 1600

CHECKS = """(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  await document.fonts.ready;
  const untypeset = [...document.querySelectorAll(".arithmatex")]
    .filter((el) => !el.querySelector("mjx-container"));
  const errors = [...document.querySelectorAll("[data-mjx-error]")];
  const images = [...document.images].filter((img) => !(img.complete && img.naturalWidth > 0));
  return JSON.stringify({
    formulas: document.querySelectorAll("mjx-container").length,
    mathErrors: errors.map((el) => el.getAttribute("data-mjx-error")),
    untypeset: untypeset.map((el) => el.textContent.slice(0, 80)),
    brokenImages: images.map((img) => img.getAttribute("src")),
    height: Math.ceil(document.documentElement.scrollHeight),
  });
})()"""


class Chromium:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (fds 3 and 4)."""

    def __init__(self, binary: str) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: Chromium reads fd 3, writes fd 4
            # copies first: a pipe may itself be fd 3 or 4, and dup2 onto itself would keep
            # its close-on-exec flag
            read, write = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.profile = tempfile.mkdtemp(prefix="pyro-vae-chromium-")
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "--no-first-run",
                f"--user-data-dir={self.profile}",
                f"--window-size={WIDTH},{VIEWPORT}",
                "about:blank",
            ],
            preexec_fn=fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=WIDTH,
            height=VIEWPORT,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read())

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


def build(site: Path) -> None:
    subprocess.run(
        ["mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)], cwd=ROOT, check=True
    )


def pages(site: Path) -> list[Path]:
    skip = {"404.html"}
    return sorted(
        p
        for p in site.rglob("*.html")
        if p.relative_to(site).parts[0] != "assets" and p.name not in skip
    )


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(site: Path) -> http.server.ThreadingHTTPServer:
    """The site on 127.0.0.1, on a free port, in a background thread."""
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def shoot(chrome: Chromium, url: str, out: Path, stem: str, scheme: str) -> list[str]:
    """Open one page, check it, save its slices; return the problems found."""
    # Material keeps the reader's palette in localStorage: leave the site (so that no page of
    # it writes there any more), forget it, and let the page follow the emulated preference.
    chrome.events.clear()
    chrome.call("Page.navigate", session=True, url="about:blank")
    chrome.wait_for("Page.loadEventFired")
    origin = "/".join(url.split("/")[:3])
    chrome.call(
        "Storage.clearDataForOrigin", session=True, origin=origin, storageTypes="local_storage"
    )
    chrome.call(
        "Emulation.setEmulatedMedia",
        session=True,
        features=[{"name": "prefers-color-scheme", "value": scheme}],
    )
    chrome.events.clear()
    chrome.call("Page.navigate", session=True, url=url)
    base = url.split("/")[:3]
    chrome.wait_for("Page.loadEventFired")
    result = chrome.call(
        "Runtime.evaluate", session=True, expression=CHECKS, awaitPromise=True, returnByValue=True
    )
    found = json.loads(result["result"]["value"])
    problems = [f"formula MathJax could not read: {e}" for e in found["mathErrors"]]
    problems += [f"formula not typeset: {t!r}" for t in found["untypeset"]]
    problems += [f"image did not load: {src}" for src in found["brokenImages"]]
    for event in chrome.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            problems.append(f"JavaScript error: {text}")
        elif method == "Network.requestWillBeSent":
            asked = params["request"]["url"]
            local = asked.split("/")[:3] == base
            if not local and not asked.startswith(("data:", "blob:", "about:")):
                problems.append(f"request leaves the machine: {asked}")
    problems = list(dict.fromkeys(problems))  # MathJax marks an error on two elements
    height = found["height"]
    for k, top in enumerate(range(0, height, SLICE), start=1):
        clip = {"x": 0, "y": top, "width": WIDTH, "height": min(SLICE, height - top), "scale": 1}
        shot = chrome.call(
            "Page.captureScreenshot",
            session=True,
            format="png",
            clip=clip,
            captureBeyondViewport=True,
        )
        (out / f"{stem}-{k}.png").write_bytes(base64.b64decode(shot["data"]))
    print(f"{stem:<32} {height:6d} px, {found['formulas']:3d} formulas", end="")
    print(f"  {len(problems)} problem(s)" if problems else "")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the screenshots")
    parser.add_argument("--site", type=Path, help="a built site (default: build one now)")
    parser.add_argument("--only", nargs="+", help="pages, as paths in the site")
    parser.add_argument("--dark", action="store_true", help="each page in the dark palette too")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)
    if not shutil.which(args.chromium):
        print("screenshots: no Chromium; on Debian: apt-get install chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyro-vae-site-") as scratch:
        site = args.site.resolve() if args.site else Path(scratch) / "site"
        if not args.site:
            build(site)
        chosen = [site / p for p in args.only] if args.only else pages(site)
        server = serve(site)
        chrome = Chromium(args.chromium)
        failures = {}
        try:
            for page in chosen:
                rel = page.relative_to(site).as_posix()
                url = f"http://127.0.0.1:{server.server_address[1]}/{rel}"
                stem = rel.removesuffix(".html").replace("/", "__")
                schemes = ("light", "dark") if args.dark else ("light",)
                for scheme in schemes:
                    name = stem if scheme == "light" else f"{stem}.dark"
                    problems = shoot(chrome, url, args.out, name, scheme)
                    if problems:
                        failures[name] = problems
        finally:
            chrome.close()
            server.shutdown()
    for name, problems in failures.items():
        for problem in problems:
            print(f"{name}: {problem}")
    print(f"screenshots of {len(chosen)} pages in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
