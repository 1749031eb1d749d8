"""The layers hold: no import cycle, no private-name import, no upward import (tools/import_graph.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from tests.helpers import REPO_ROOT as ROOT


def load_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_packprep_has_no_cycle_private_import_or_upward_import():
    tool = load_tool()
    assert tool.problems(tool.graph()) == []


def test_the_command_fails_on_a_problem_and_prints_the_graph(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "[0] errors -> -" in done.stdout and "0 cycles" in done.stderr


def test_the_checks_find_what_they_look_for(tmp_path):
    """On a made-up package: a function-local cycle, a private name, a stage importing the pipeline."""
    tool = load_tool()
    package = tmp_path / "packprep"
    (package / "stages").mkdir(parents=True)
    (package / "pipeline").mkdir()
    for init in (package / "__init__.py", package / "stages" / "__init__.py", package / "pipeline" / "__init__.py"):
        init.write_text("")
    (package / "errors.py").write_text("def f():\n    from packprep.io import thing\n")
    (package / "io.py").write_text("from packprep.errors import _secret\n")
    (package / "stages" / "order.py").write_text("from packprep.pipeline import run\n")
    tool.ROOT = tmp_path
    found = tool.problems(tool.graph())
    assert "cycle: errors <-> io" in found
    assert "io:1 imports the private name packprep.errors._secret" in found
    assert any(p.startswith("stages.order:1 imports pipeline.__init__") for p in found)
