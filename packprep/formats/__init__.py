"""Output formats: each module holds a writer and its reader side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
