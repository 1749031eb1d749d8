"""How packprep starts a child Python that works for it (tokenize workers, bpe-openai encoders).

A plain ``subprocess`` rather than multiprocessing: spawn and forkserver re-run the caller's
main script in each child (a script calling ``packprep.pack`` without an
``if __name__ == "__main__"`` guard would crash or start over), and fork copies whatever lock
another thread (the CLI's progress thread) holds at that moment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The children are the parallelism: a thread pool inside each would only compete for the same
# cores. OpenBLAS also starts one thread per core when numpy is imported (~0.06 CPU-s per child).
_ONE_THREAD = ("RAYON_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def start_child(code: str) -> subprocess.Popen:
    """``python -c code`` with pipes on stdin and stdout, importing this very packprep, one thread per library."""
    package_parent = str(Path(__file__).resolve().parents[1])  # the folder holding packprep/
    python_path = [package_parent, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path), **{name: "1" for name in _ONE_THREAD}}
    # `python -c` puts the working folder first on sys.path, ahead of PYTHONPATH: run from a folder
    # holding another packprep/, the child would import that one (`-P` says the same from 3.11 on).
    code = f"import sys; del sys.path[0]; {code}"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
