"""Golden output: the sha256 of every file each strategy x packing x format writes (and the Ray engine's).

Recorded from the code before the one-way-layers refactor (issue 14) and checked in
(tests/golden/hashes.json): a refactor that changes one byte of any output, of the
document store or of a stage's cached files fails here. The corpus is
tests/golden/corpus: 50 records of each examples/corpus part (gzipped, so the .gz reader
runs) plus planted duplicates, an empty text and a record without an id
(tests/golden/make_corpus.py), so exact, near and semantic dedup all drop something.

After an intended change of output, rerun with PACKPREP_UPDATE_GOLDEN=1 and say why in
the commit. Embeddings are floats from numpy/torch on this machine's CPU; another BLAS
could change their last bits, which would show here first.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from packprep.config import EmbedConfig, PackConfig, TokenizeConfig
from packprep.engines import Engine
from packprep.pipeline import pack, tokenize
from tests.helpers import EXAMPLES_CORPUS, REPO_ROOT

CORPUS = REPO_ROOT / "tests" / "golden" / "corpus"
HASHES = REPO_ROOT / "tests" / "golden" / "hashes.json"
UPDATE = os.environ.get("PACKPREP_UPDATE_GOLDEN") == "1"

STRATEGIES = ("random", "eos", "cluster", "icp")
PACKINGS = ("split", "bestfit")
FORMATS = ("npy", "arrow", "megatron")
SEQ_LEN = 256
STATIC = EmbedConfig(model="static")  # the static embedder: MiniLM over the whole corpus is too slow for the edit loop


def folder_hashes(folder: Path, *, replace: dict[str, str]) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path.

    The only bytes that legitimately vary between runs are absolute paths inside JSON
    manifests (manifest.json records the store's absolute path and the corpus path as
    given): in ``*.json`` files each key of ``replace`` becomes its value before hashing.
    Nothing else is excluded: there are no timestamps in any output.
    """
    hashes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".json":
            for old, new in replace.items():
                data = data.replace(json.dumps(old)[1:-1].encode(), new.encode())
        hashes[path.relative_to(folder).as_posix()] = hashlib.sha256(data).hexdigest()
    return hashes


def check(name: str, got: dict[str, str]) -> None:
    recorded = json.loads(HASHES.read_text()) if HASHES.is_file() else {}
    if UPDATE:
        recorded[name] = got
        HASHES.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    assert name in recorded, f"no golden hashes for {name}; record them with PACKPREP_UPDATE_GOLDEN=1"
    assert got == recorded[name]


def replacements(tmp: Path) -> dict[str, str]:
    return {str(CORPUS): "<corpus>", str(tmp): "<tmp>"}


@pytest.fixture(scope="module")
def semantic_store(tmp_path_factory) -> Path:
    """One document store shared by the cluster/icp cases, so the static model is fitted once;
    each pack from it writes (or reuses) its dedup and embeddings beside it."""
    work = tmp_path_factory.mktemp("golden") / "store"
    tokenize(CORPUS, work, config=TokenizeConfig())
    return work


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("strategy", ("random", "eos"))
def test_golden_from_corpus(strategy, packing, fmt, tmp_path):
    """random/eos from the raw corpus: tokenize into OUT/work, then pack."""
    out = tmp_path / "out"
    pack(CORPUS, out, config=PackConfig(strategy=strategy, packing=packing, seq_len=SEQ_LEN), format=fmt)
    check(f"{strategy}-{packing}-{fmt}", folder_hashes(out, replace=replacements(tmp_path)))


@pytest.mark.slow  # the static embedder's fit embeds a sample with MiniLM
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("strategy", ("cluster", "icp"))
def test_golden_from_store(strategy, packing, fmt, semantic_store, tmp_path):
    """cluster/icp from a document store: dedup, static embed, semantic dedup (icp), order, pack."""
    out = tmp_path / "out"
    pack(semantic_store, out, config=PackConfig(strategy=strategy, packing=packing, seq_len=SEQ_LEN), embed_config=STATIC, format=fmt)
    replace = {**replacements(tmp_path), str(semantic_store): "<store>"}
    check(f"{strategy}-{packing}-{fmt}", folder_hashes(out, replace=replace))


@pytest.mark.slow
def test_golden_store_files(semantic_store, tmp_path):
    """The store with what the cluster/icp packs cached in it (dedup.*, embeddings.static.npy, embed.static.json)."""
    pack(semantic_store, tmp_path / "out", config=PackConfig(strategy="icp", seq_len=SEQ_LEN), embed_config=STATIC)
    # store.json names the corpus by its absolute path: the checkout's location must not change the hash.
    check("store", folder_hashes(semantic_store, replace={str(CORPUS): "<corpus>", str(semantic_store.parent): "<tmp>"}))


@pytest.mark.slow
def test_golden_ray_engine(tmp_path):
    """icp from the raw corpus on Ray (tokenize and MinHash dedup on Ray tasks; the static
    embedder always runs here): the bytes the local engine writes."""
    pytest.importorskip("ray", reason="the ray engine needs ray (pip install 'packprep[ray]'); CI installs it")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        for engine in ("local", "ray"):
            out = tmp_path / engine
            pack(
                CORPUS, out, config=PackConfig(strategy="icp", packing="bestfit", seq_len=SEQ_LEN),
                embed_config=STATIC, engine=Engine(engine),
            )
            check(f"engine-{engine}-icp-bestfit-npy", folder_hashes(out, replace={str(out): "<out>", **replacements(tmp_path)}))
    finally:
        ray.shutdown()
    recorded = json.loads(HASHES.read_text())
    assert recorded["engine-ray-icp-bestfit-npy"] == recorded["engine-local-icp-bestfit-npy"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("packing", PACKINGS)
def test_golden_examples_corpus(packing, fmt, tmp_path):
    """The whole examples/corpus (2,923 documents, eos): the shipped corpus itself."""
    examples = EXAMPLES_CORPUS
    out = tmp_path / "out"
    pack(examples, out, config=PackConfig(strategy="eos", packing=packing, seq_len=2048), format=fmt)
    check(f"examples-eos-{packing}-{fmt}", folder_hashes(out, replace={str(examples): "<examples>", str(tmp_path): "<tmp>"}))
