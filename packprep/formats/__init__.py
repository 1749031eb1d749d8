"""Output formats: each module holds a writer and its reader/checker side by side; ``CONVERSIONS`` lists them.

``npy`` (``formats.npy``) is what ``pack`` always writes and what ``inspect``, ``verify`` and
``PackedDataset`` read. Every other format is a conversion of it into ``OUT/<name>`` (or
``convert --dest``): one :class:`Conversion` entry below, whose module has the writer and the
checker ``verify`` runs. A new format is one module in this folder plus one entry here; the
CLI's ``--format``/``--to`` choices, ``verify`` and the output-folder rules follow from it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

@dataclass(frozen=True)
class Conversion:
    """A trainer format converted from the npy shards. ``module`` (imported when used: pyarrow is heavy)
    defines ``write(out, dest, *, labels, progress)`` and ``check(out, dest) -> [(file, problem)]``."""

    name: str
    module: str
    takes_labels: bool = False  # whether --labels (a labels column) applies

    def write(self, out: Path, dest: Path, *, labels: bool, progress: Callable[[int], None] | None) -> None:
        importlib.import_module(self.module).write(out, dest, labels=labels, progress=progress)

    def check(self, out: Path, dest: Path) -> list[tuple[str, str]]:
        return importlib.import_module(self.module).check(out, dest)


CONVERSIONS = {
    "arrow": Conversion("arrow", "packprep.formats.arrow", takes_labels=True),  # Hugging Face datasets
    "megatron": Conversion("megatron", "packprep.formats.megatron"),  # Megatron-LM indexed .bin/.idx
}
FORMATS = ("npy", *CONVERSIONS)  # pack --format: npy alone, or npy plus one conversion


def labels_ignored(format: str, labels: bool | None, option: str) -> str | None:
    """The warning for ``--labels`` with a format that has no labels column (``option``: ``--format`` or ``--to``)."""
    takes = format in CONVERSIONS and CONVERSIONS[format].takes_labels
    if labels and not takes:
        return f"--labels adds a column to the arrow copy only; ignored with {option} {format}"
    return None


# The manifest a conversion (OUT/arrow, OUT/megatron) writes last, naming the npy output it converts.
CONVERSION_MANIFEST = "packprep.json"


def read_conversion_info(
    dest: Path, source_key: str, *, format_name: str, format_version: int
) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """A finished conversion's ``packprep.json`` and the problems with it (verify's checkers).

    Returns ``(info, [])`` when ``dest`` holds a finished conversion of this format and
    version made from the output whose key is ``source_key``; else ``(None, problems)``,
    each problem a ``(file, what is wrong)`` pair.
    """
    from packprep.io import load_json

    try:
        info = load_json(Path(dest) / CONVERSION_MANIFEST)
    except (OSError, ValueError) as exc:
        return None, [(CONVERSION_MANIFEST, f"missing or unreadable ({type(exc).__name__}); the conversion did not finish")]
    if not isinstance(info, dict) or (info.get("format"), info.get("format_version")) != (format_name, format_version):
        return None, [(CONVERSION_MANIFEST, f"is not {format_name} version {format_version}")]
    if info.get("source_key") != source_key:
        return None, [(CONVERSION_MANIFEST, "converts another output (source_key differs); run `packprep convert` again")]
    return info, []
