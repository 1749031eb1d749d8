"""A recipe: several sources, their weights, a held-out split and the benchmarks to keep out, in one TOML file.

```toml
cache = "cache/"            # optional: where each source's document store is kept (default OUT/work/sources)
[pack]                      # any `packprep pack` option, spelled with underscores; the command line wins
strategy = "icp"
seq_len = 2048
[mix]
tokens = 2_000_000          # optional train total; without it, the largest total that repeats no source
[[source]]
name = "web"
path = "data/web/"          # anything pack reads; relative paths are relative to the recipe file
weight = 0.6                # share of the train tokens
text_field = "text"         # optional, per source; so are id_field and id_prefix
id_prefix = ["site-a/"]     # optional: only the documents whose id starts with one of these
[split]
val_fraction = 0.005        # or val_documents = N per source
[decontaminate]
paths = ["evals/"]          # benchmark texts, any corpus format
ngram = 13
val = true                  # also against the val documents (default)
max_ngram_documents = 100   # optional: an n-gram in more train documents than this is boilerplate, ignored
```

:func:`load_recipe` parses and checks the file; every problem is one ``PackprepError`` naming the
file, the key and (where the key is written in the file) its line. Nothing here reads a corpus:
checks that need token counts (a ``tokens`` target that cannot be met) happen in the pipeline,
through :meth:`Recipe.error`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packprep.config import ON_ERROR, PACKINGS, STRATEGIES
from packprep.errors import PackprepError

# `packprep pack` options a recipe's [pack] may set, with the TOML types each accepts. The
# names are the CLI's parameter names; cli.pack maps them back onto its options.
PACK_KEYS: dict[str, tuple[type, ...]] = {
    "strategy": (str,), "seq_len": (int,), "packing": (str,), "seed": (int,), "shard_size": (int,),
    "tokenizer": (str,), "text_field": (str,), "id_field": (str,), "eos_id": (int,), "bos_id": (int,),
    "on_error": (str,), "dedup": (bool,), "minhash_threshold": (float, int), "semantic_threshold": (float, int),
    "model": (str,), "embedder": (str,), "embed_tokens": (int,), "clusters": (int,), "knn": (int,),
    "format": (str,), "labels": (bool,), "workers": (int,), "engine": (str,), "ray_address": (str,),
}
PACK_CHOICES = {  # the CLI's choices (options.py); the config's own where it has them
    "strategy": tuple(STRATEGIES), "packing": tuple(PACKINGS), "on_error": tuple(ON_ERROR),
    "format": ("npy", "arrow", "megatron"), "engine": ("local", "ray"), "embedder": ("minilm", "static"),
}
_TOP_KEYS = ("cache", "pack", "mix", "source", "split", "decontaminate")
_MIX_KEYS = ("tokens",)
_SOURCE_KEYS = ("name", "path", "weight", "text_field", "id_field", "id_prefix")
_SPLIT_KEYS = ("val_fraction", "val_documents")
_DECONTAMINATE_KEYS = ("paths", "ngram", "val", "max_ngram_documents")
DEFAULT_NGRAM = 13  # words; the n-gram size of GPT-3's and the Pile's benchmark decontamination
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a source name is also a folder name and a JSON key


@dataclass(frozen=True, kw_only=True)
class Source:
    name: str
    path: Path  # resolved against the recipe's folder
    weight: float  # as written; Recipe.shares normalises
    text_field: str | None = None  # None: the [pack] / command-line value
    id_field: str | None = None
    id_prefix: tuple[str, ...] = ()  # empty: every document


@dataclass(frozen=True, kw_only=True)
class Recipe:
    path: Path
    text: str  # the file verbatim; the manifest records it and its sha256
    pack: dict[str, Any]  # [pack]: option name -> value
    sources: tuple[Source, ...]
    tokens: int | None = None
    val_fraction: float | None = None
    val_documents: int | None = None
    benchmarks: tuple[Path, ...] = ()
    ngram: int = DEFAULT_NGRAM
    decontaminate_val: bool = True  # also drop train documents sharing an n-gram with a val document
    max_ngram_documents: int | None = None  # an n-gram more train documents share is boilerplate: it matches nothing
    cache: Path | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def shares(self) -> dict[str, float]:
        """Each source's share of the train tokens: its weight over the sum of weights."""
        total = sum(s.weight for s in self.sources)
        return {s.name: s.weight / total for s in self.sources}

    @property
    def has_split(self) -> bool:
        return bool(self.val_fraction) or bool(self.val_documents)

    def error(self, message: str, *, table: str, key: str | None = None, index: int = 0) -> PackprepError:
        """A one-line error naming this recipe, ``[table] key`` and the key's line where it is written."""
        return _error(self.path, self.text, message, table=table, key=key, index=index)


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check the recipe at ``path`` (see the module docstring for the keys)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PackprepError("recipe file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise PackprepError(f"cannot read the recipe: {err}", path=path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PackprepError(f"not valid TOML: {err}", path=path) from None  # tomllib's message ends "(at line N, column M)"
    here = path.resolve().parent

    def fail(message: str, table: str, key: str | None = None, index: int = 0) -> PackprepError:
        return _error(path, text, message, table=table, key=key, index=index)

    _check_keys(data, _TOP_KEYS, fail, table="")
    pack = _table(data, "pack", fail)
    _check_keys(pack, tuple(PACK_KEYS), fail, table="pack")
    for key, value in pack.items():
        _check_type(value, PACK_KEYS[key], fail, table="pack", key=key)
        if key in PACK_CHOICES and value not in PACK_CHOICES[key]:
            raise fail(f"{key} must be one of {', '.join(PACK_CHOICES[key])}, got {value!r}", "pack", key)

    mix = _table(data, "mix", fail)
    _check_keys(mix, _MIX_KEYS, fail, table="mix")
    tokens = mix.get("tokens")
    if tokens is not None:
        _check_type(tokens, (int,), fail, table="mix", key="tokens")
        if tokens <= 0:
            raise fail(f"tokens must be more than 0, got {tokens}", "mix", "tokens")

    sources = _sources(data.get("source"), here, fail)

    split = _table(data, "split", fail)
    _check_keys(split, _SPLIT_KEYS, fail, table="split")
    val_fraction, val_documents = split.get("val_fraction"), split.get("val_documents")
    if val_fraction is not None and val_documents is not None:
        raise fail("give val_fraction or val_documents, not both", "split", "val_documents")
    if val_fraction is not None:
        _check_type(val_fraction, (float, int), fail, table="split", key="val_fraction")
        if not 0 <= val_fraction < 1:
            raise fail(f"val_fraction must be in [0, 1), got {val_fraction}", "split", "val_fraction")
    if val_documents is not None:
        _check_type(val_documents, (int,), fail, table="split", key="val_documents")
        if val_documents < 0:
            raise fail(f"val_documents must be 0 or more, got {val_documents}", "split", "val_documents")

    decontaminate = _table(data, "decontaminate", fail)
    _check_keys(decontaminate, _DECONTAMINATE_KEYS, fail, table="decontaminate")
    benchmarks: list[Path] = []
    if "paths" in decontaminate:
        paths = decontaminate.get("paths")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise fail("paths must be a non-empty list of file or folder names", "decontaminate", "paths")
        for entry in paths:
            resolved = here / entry
            if not resolved.exists():
                raise fail(f"paths: {entry!r} does not exist (looked for {resolved})", "decontaminate", "paths")
            benchmarks.append(resolved)
    against_val = decontaminate.get("val", True)
    _check_type(against_val, (bool,), fail, table="decontaminate", key="val")
    common = decontaminate.get("max_ngram_documents")
    if common is not None:
        _check_type(common, (int,), fail, table="decontaminate", key="max_ngram_documents")
        if common < 1:
            raise fail(f"max_ngram_documents must be at least 1, got {common}", "decontaminate", "max_ngram_documents")
    ngram = decontaminate.get("ngram", DEFAULT_NGRAM)
    _check_type(ngram, (int,), fail, table="decontaminate", key="ngram")
    if ngram < 1:
        raise fail(f"ngram must be at least 1, got {ngram}", "decontaminate", "ngram")

    cache = data.get("cache")
    if cache is not None:
        _check_type(cache, (str,), fail, table="", key="cache")
    return Recipe(
        path=path, text=text, pack=dict(pack), sources=sources, tokens=tokens,
        val_fraction=float(val_fraction) if val_fraction is not None else None, val_documents=val_documents,
        benchmarks=tuple(benchmarks), ngram=ngram, decontaminate_val=against_val, max_ngram_documents=common, cache=None if cache is None else here / cache,
    )


def _sources(entries: Any, here: Path, fail: Any) -> tuple[Source, ...]:
    if entries is None:
        raise fail("no [[source]]: a recipe needs at least one", "")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise fail("source must be an array of tables, written [[source]]", "source")
    sources: list[Source] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        _check_keys(entry, _SOURCE_KEYS, fail, table="source", index=i)
        for key in ("name", "path", "weight"):
            if key not in entry:
                raise fail(f"number {i + 1} has no {key}", "source", None, i)
        name, weight = entry["name"], entry["weight"]
        _check_type(name, (str,), fail, table="source", key="name", index=i)
        if not _NAME.fullmatch(name):
            raise fail(f"name {name!r}: use letters, digits, '_', '-' and '.'", "source", "name", i)
        if name in seen:
            raise fail(f"duplicate source name {name!r}", "source", "name", i)
        seen.add(name)
        _check_type(weight, (float, int), fail, table="source", key="weight", index=i)
        if not weight > 0:
            raise fail(f"weight of source {name!r} must be more than 0, got {weight}", "source", "weight", i)
        _check_type(entry["path"], (str,), fail, table="source", key="path", index=i)
        resolved = here / entry["path"]
        if not resolved.exists():
            raise fail(f"path of source {name!r} does not exist: {entry['path']!r} (looked for {resolved})", "source", "path", i)
        for key in ("text_field", "id_field"):
            if key in entry:
                _check_type(entry[key], (str,), fail, table="source", key=key, index=i)
        prefix = entry.get("id_prefix", [])
        prefix = [prefix] if isinstance(prefix, str) else prefix
        if not isinstance(prefix, list) or not all(isinstance(p, str) and p for p in prefix):
            raise fail("id_prefix must be a string or a list of non-empty strings", "source", "id_prefix", i)
        sources.append(Source(
            name=name, path=resolved, weight=float(weight), text_field=entry.get("text_field"),
            id_field=entry.get("id_field"), id_prefix=tuple(prefix),
        ))
    return tuple(sources)


def _table(data: dict[str, Any], name: str, fail: Any) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise fail(f"{name} must be a table, written [{name}]", "", name)
    return value


def _check_keys(entries: dict[str, Any], allowed: tuple[str, ...], fail: Any, *, table: str, index: int = 0) -> None:
    for key in entries:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (expected one of {', '.join(allowed)})"
            raise fail(f"unknown key {key!r}{hint}", table, key, index)


def _check_type(value: Any, types: tuple[type, ...], fail: Any, *, table: str, key: str, index: int = 0) -> None:
    # bool is an int in Python; a TOML `true` where a number belongs is a mistake.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join({str: "a string", int: "an integer", float: "a number", bool: "true or false"}[t] for t in types)
        raise fail(f"{key} must be {expected}, got {value!r}", table, key, index)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?")


def key_line(text: str, *, table: str, key: str | None, index: int = 0) -> int | None:
    """1-based line of ``key`` in the ``index``-th ``[table]`` (``[[table]]``) of the TOML ``text``; the
    table's header line when ``key`` is None; None when it is not written there (tomllib keeps no positions).
    ``table`` "" is the top level, before any header."""
    current, seen = "", {"": 0}
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=") if key else None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            if table == "" and key == header.group(2):  # a top-level key written as a table
                return number
            current = header.group(2)
            seen[current] = seen.get(current, -1) + 1
            if key is None and current == table and seen[current] == index:
                return number
            continue
        if pattern is not None and current == table and seen.get(current) == index and pattern.match(line):
            return number
    return None


def _error(path: Path, text: str, message: str, *, table: str, key: str | None, index: int) -> PackprepError:
    where = f"[{table}] " if table and table != "source" else ("[[source]] " if table == "source" else "")
    return PackprepError(f"{where}{message}", path=path, line=key_line(text, table=table, key=key, index=index))
