"""A real JupyterLab in headless Chromium: open a notebook, run it, take screenshots.

    python tests/browser.py notebooks/01_build.ipynb --out shot.png [--wait-for .ewb-builder]

Starts `jupyter lab` on 127.0.0.1 with a token and a temporary runtime folder, drives
Debian's /usr/bin/chromium through Playwright's Python package (no browser
download), runs all cells, waits for a CSS selector, and saves a full-page PNG.
Tests use `JupyterLab` and `open_notebook` directly.

Tooling, not a step of the data path; it ships in the package because it is how a user
(and CI) looks at a panel as a person would: the README's screenshots are made with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
ROOT = Path(__file__).resolve().parent.parent


def chromium_path() -> Optional[str]:
    for p in (os.environ.get("EWB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if p and Path(p).exists():
            return p
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """A JupyterLab server of our own on 127.0.0.1, stopped on exit."""

    def __init__(self, root: Path = ROOT, timeout: float = 60) -> None:
        self.root, self.timeout = root, timeout
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="ewb-lab-")
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "JupyterLab":
        settings = Path(self._tmp.name) / "settings" / "@jupyterlab"
        (settings / "apputils-extension").mkdir(parents=True)  # no "news?" toast over the screenshots
        (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
            '{"fetchNews": "false", "checkForUpdates": false}')
        # Never save: running a notebook here must not write its outputs into the repository.
        (settings / "docmanager-extension").mkdir(parents=True)
        (settings / "docmanager-extension" / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": self._tmp.name, "JUPYTER_CONFIG_DIR": self._tmp.name + "/cfg"}
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--ServerApp.port_retries=0", "--allow-root", f"--LabApp.user_settings_dir={self._tmp.name}/settings", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
               "jupyterlab.NeverCheckForUpdate"]
        self.log = open(Path(self._tmp.name) / "lab.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {(Path(self._tmp.name) / 'lab.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise TimeoutError(f"jupyter lab did not answer on {self.url} within {self.timeout} s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        self._tmp.cleanup()

    def notebook_url(self, path: Path) -> str:
        rel = Path(path).resolve().relative_to(self.root.resolve())
        return f"{self.url}/lab/tree/{rel.as_posix()}?token={self.token}&reset"


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator:
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no Chromium found: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def run_all_cells(page, notebook_url: str, wait_for: Optional[str], timeout_ms: int = 180_000) -> None:
    """Opens the notebook, runs every cell through JupyterLab's own command, waits for
    the kernel to be idle and (optionally) for `wait_for` to appear."""
    page.goto(notebook_url)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout_ms)
    # the kernel has started: the status bar says "Idle"
    page.wait_for_function("() => /\\bIdle\\b/.test(document.querySelector('.jp-StatusBar-Widget, "
                           ".jp-StatusBar')?.innerText || document.body.innerText)", timeout=timeout_ms)
    page.locator(".jp-NotebookPanel .jp-Cell").first.click()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=timeout_ms)  # the Run menu
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click(timeout=timeout_ms)
    deadline = time.time() + timeout_ms / 1000
    while time.time() < deadline:  # every cell executed: no "[*]" prompt left, every prompt numbered
        done = page.evaluate("""() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
            return prompts.length > 0 && prompts.every(t => /\\[\\d+\\]/.test(t));
        }""")
        if done:
            break
        time.sleep(0.5)
    else:
        prompts = page.evaluate("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                                ".map(e => e.textContent)")
        raise TimeoutError(f"the notebook did not finish running in {timeout_ms / 1000:.0f} s; prompts: {prompts}; "
                           f"{kernel_states(notebook_url)}")
    if wait_for:
        page.wait_for_selector(wait_for, timeout=timeout_ms)
    time.sleep(1.0)  # let plotly and widgets finish drawing


def kernel_states(notebook_url: str) -> str:
    """What the server says of its kernels (for a timeout's message): `idle` with cells still
    at [*] means a request never reached the kernel; `busy` means a cell is still running."""
    parts = urllib.parse.urlsplit(notebook_url)
    token = urllib.parse.parse_qs(parts.query).get("token", [""])[0]
    try:
        with urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/api/kernels?token={token}", timeout=5) as r:
            kernels = json.load(r)
    except (OSError, ValueError) as e:
        return f"the server's kernels could not be read ({e})"
    import ipykernel

    states = ", ".join(f"{k['name']} {k['execution_state']} (last activity {k['last_activity']})" for k in kernels)
    return f"kernels: {states or 'none'}; ipykernel {ipykernel.__version__}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--wait-for", default=None, help="CSS selector that must appear")
    ap.add_argument("--scroll-to", default=None, help="CSS selector to scroll into view before the shot")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args(argv)
    with JupyterLab() as lab, browser_page(args.width, args.height) as page:
        run_all_cells(page, lab.notebook_url(args.notebook), args.wait_for)
        if args.scroll_to:
            page.locator(args.scroll_to).first.scroll_into_view_if_needed()
            time.sleep(0.5)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
