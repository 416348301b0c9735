"""The pool in a Jupyter notebook: a small notebook executed by nbclient in a real kernel.

Functions and classes defined in cells, lambdas and closures reach the workers
by value; ``progress=True`` renders as a widget (tqdm.auto); AsyncPool is
awaited at the top level of a cell, as notebooks allow. The kernel runs in a
child interpreter (``python -c``) so that its ZeroMQ sockets and threads never
live in the test process. Start methods: spawn and forkserver, what a notebook
should use (a kernel has threads: fork is unsafe there, as CPython 3.14 warns).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CELLS = [
    "import serentak\nctx = serentak.get_context({method!r})",
    "def double(x):\n    return 2 * x\n\nclass Scaler:\n    def __init__(self, k):\n"
    "        self.k = k\n    def __call__(self, x):\n        return self.k * x",
    "with ctx.Pool(2) as pool:\n    print(pool.map(double, range(5)))\n"
    "    print(pool.map(Scaler(3), range(5)))\n    k = 10\n"
    "    print(pool.map(lambda x: x + k, range(3)))",
    "with ctx.Pool(2) as pool:\n    total = sum(pool.map(double, range(200), progress=True))\n"
    "print(total)",
    "async with serentak.AsyncPool(2, context=ctx) as apool:\n"
    "    print(await apool.map(double, [7, 8]))",
]

# nbformat.read fills in what the hand-written notebook leaves out (cell ids).
RUNNER = """
import sys, nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=50, kernel_name="python3").execute()
nbformat.write(notebook, sys.argv[1])
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_notebook_runs_cell_defined_code_with_a_progress_widget(
    method: str, tmp_path: Path
) -> None:
    path = tmp_path / "pool.ipynb"
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": cell.format(method=method),
            }
            for cell in CELLS
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))
    subprocess.run([sys.executable, "-c", RUNNER, str(path)], check=True, timeout=55, cwd=tmp_path)
    cells = json.loads(path.read_text())["cells"]
    printed = [
        "".join(o.get("text", ""))
        for cell in cells
        for o in cell["outputs"]
        if o.get("name") == "stdout"
    ]
    assert printed == [
        "[0, 2, 4, 6, 8]\n[0, 3, 6, 9, 12]\n[10, 11, 12]\n",
        "39800\n",
        "[14, 16]\n",
    ]
    progress_outputs = cells[3]["outputs"]
    assert any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in progress_outputs
    ), progress_outputs
