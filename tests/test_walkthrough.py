"""The walkthrough notebook: in sync with its source, teaching with the library's code, and executed top to bottom.

The notebook runs in its fast mode (``DIFFUSIONLAB_WALKTHROUGH_FAST=1``: fewer training and sampling steps) on
the real MNIST of the ``data_dir`` fixture, in a fresh kernel and an empty working directory, sampling from the
``trained_run`` fixture's run folder (the "longer-trained checkpoint" branch). Every numerical claim of the text
is an ``assert`` in a cell, so a failing claim fails this test. It takes ~80 s on this CPU (target: under three
minutes); its time is printed, and a cell that hangs fails after CELL_TIMEOUT_S.
"""

from __future__ import annotations

import ast
import importlib.util
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT_S = 600  # a safety net against a hung cell, not a speed target (see make bench for those)


def _builder():
    spec = importlib.util.spec_from_file_location("build_walkthrough", ROOT / "notebooks" / "build_walkthrough.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _builder()


def test_notebook_matches_its_source():
    stored = build.NOTEBOOK.read_text(encoding="utf-8")
    assert stored == build.notebook_text(build.build_notebook()), (
        "notebooks/walkthrough.ipynb is out of date: run python notebooks/build_walkthrough.py"
    )


def test_notebook_uses_the_library_and_defines_no_classes():
    nb = build.build_notebook()
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    tree = ast.parse(code)
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    used = {"diffusionlab.diffusion", "diffusionlab.sampling", "diffusionlab.pipelines", "diffusionlab.metrics"}
    assert used <= modules
    assert any(m.startswith("diffusionlab.sd") for m in modules)
    assert not [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)], "the notebook must not define models"
    assert sum(isinstance(n, ast.Assert) for n in ast.walk(tree)) >= 30


@pytest.mark.slow
def test_notebook_executes_in_fast_mode(tmp_path, data_dir, trained_run):
    nb = build.build_notebook()
    env = build.kernel_env(fast=True, run=str(trained_run))
    env.update(
        DIFFUSIONLAB_DATA_DIR=str(data_dir),
        DIFFUSIONLAB_CACHE_DIR=str(tmp_path / "cache"),  # no cached classifier: the notebook trains a quick one
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    env.pop("DIFFUSIONLAB_INCEPTION_WEIGHTS", None)
    start = time.time()
    build.execute(nb, env, tmp_path, timeout=CELL_TIMEOUT_S)
    elapsed = time.time() - start

    stdout = "\n".join(
        o.text for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("name") == "stdout"
    )
    assert "fast mode: True" in stdout
    assert f"sampling from {trained_run.name}" in stdout  # the run folder was loaded, not the notebook's own net
    assert "walkthrough finished" in stdout
    pictures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert pictures >= 10
    print(f"the fast walkthrough ran in {elapsed:.0f} s")
