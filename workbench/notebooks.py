"""Runs the notebooks top to bottom, headless, and writes an HTML copy of each.

    python -m workbench.notebooks [NAME ...] [--out DIR] [--timeout S]

Used by `bash run.sh --headless` and by the tests. Each notebook runs in a fresh
kernel with notebooks/ as its working folder; a failing cell fails the run and
names the notebook and the cell.

Tooling, not a step of the data path; it ships in the package because it is the README's
main command in its headless form.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(path: Path, html_dir: Path | None = None, timeout: int = 900):
    """Executes one notebook in place (in memory); returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    if html_dir is not None:
        from nbconvert import HTMLExporter

        html_dir.mkdir(parents=True, exist_ok=True)
        body, _ = HTMLExporter().from_notebook_node(nb)
        (html_dir / f"{path.stem}.html").write_text(body)
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="notebook names (default: all, in order)")
    ap.add_argument("--out", type=Path, default=NOTEBOOKS / "_html", help="folder for the HTML copies")
    ap.add_argument("--timeout", type=int, default=900, help="seconds a cell may run")
    args = ap.parse_args(argv)
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.names:
        paths = [p for p in paths if p.stem in args.names or p.name in args.names]
    failed = 0
    for p in paths:
        t = time.time()
        try:
            run_notebook(p, args.out, args.timeout)
            print(f"ok    {p.name}  ({time.time() - t:.0f} s)  -> {args.out / (p.stem + '.html')}")
        except Exception as e:  # noqa: BLE001 - report every notebook, then fail
            failed += 1
            print(f"FAIL  {p.name}: {type(e).__name__}: {str(e)[-2000:]}", file=sys.stderr)
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
