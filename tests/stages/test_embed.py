"""Embedding stage: the packaged MiniLM, loaded once, on a few dozen short texts (~30 docs/s on CPU)."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest

from packprep.errors import PackprepError
from packprep.stages import embed, model_files
from packprep.stages.embed import DEFAULT_MODEL, embed_documents, embed_texts, first_tokens_text, load_embedder
from tests.helpers import PAIRED_TEXTS

TEXTS = [
    "Cats sleep.",
    "The central bank raised interest rates by half a percentage point to fight persistent inflation.",
    "A recipe for bread: flour, water, salt and yeast, kneaded and left to rise overnight before baking.",
    "Hello",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "The goalkeeper saved a penalty in the final minute.",
    "",
    "Rust's borrow checker rejects programs that would alias mutable state, which prevents data races at compile time.",
]


@pytest.fixture(scope="module")
def embedder() -> embed.Embedder:
    return load_embedder()


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


@pytest.mark.slow
def test_packaged_model_is_described_for_manifests(embedder):
    assert (embedder.name, embedder.dim) == (DEFAULT_MODEL, 384)
    assert len(embedder.fingerprint) == 64 and int(embedder.fingerprint, 16) >= 0
    assert embedder.fingerprint == model_files.model_fingerprint(model_files.packaged_model_dir())  # stable across calls
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


@pytest.mark.slow
def test_output_shape_dtype_and_unit_norm(embedder):
    calls: list[int] = []
    vectors = embed_texts(embedder, TEXTS, batch_size=3, progress=calls.append)
    assert vectors.shape == (8, 384) and vectors.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(_f32(vectors), axis=1), 1.0, atol=2e-3)
    assert calls == [3, 3, 2]
    wide = embed_texts(embedder, TEXTS[:2], dtype=np.float32)
    assert wide.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(wide, axis=1), 1.0, atol=1e-5)
    assert embed_texts(embedder, []).shape == (0, 384)


@pytest.mark.slow
def test_order_is_preserved_despite_length_sorting(embedder):
    # TEXTS is deliberately not sorted by length, so batching permutes it internally.
    batched = embed_texts(embedder, TEXTS, batch_size=3, dtype=np.float32)
    single = np.concatenate([embed_texts(embedder, [t], dtype=np.float32) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    # Deterministic: the same call gives the same vectors (no dropout).
    assert np.array_equal(batched, embed_texts(embedder, TEXTS, batch_size=3, dtype=np.float32))


@pytest.mark.slow
def test_similar_sentences_are_closer_than_unrelated_ones(embedder):
    v = _f32(
        embed_texts(embedder, PAIRED_TEXTS)
    )
    cos = v @ v.T
    assert cos[0, 1] > cos[0, 2] + 0.3
    assert cos[3, 4] > cos[3, 5] + 0.3


def test_first_tokens_text_truncates_and_is_lazy():
    seen: list[list[int]] = []

    def decode(ids: list[int]) -> str:
        seen.append(ids)
        return " ".join(map(str, ids))

    tokens = np.arange(20, dtype=np.uint16)
    offsets = np.array([0, 3, 3, 15, 20], dtype=np.int64)  # doc 1 is empty
    texts = first_tokens_text(decode, tokens, offsets, np.array([3, 0, 2, 1]), max_tokens=4)
    assert seen == []  # nothing decoded before it is asked for
    assert next(texts) == "15 16 17 18"
    assert list(texts) == ["0 1 2", "3 4 5 6", ""]
    assert all(type(t) is int for ids in seen for t in ids)  # plain ints, as tokenizer decoders want
    with pytest.raises(PackprepError):
        next(first_tokens_text(decode, tokens, offsets, np.array([0]), max_tokens=0))


@pytest.mark.slow
def test_embed_documents_fills_a_memmap(embedder, tmp_path):
    words = "the cat sat on a mat stocks fell sharply today as investors sold shares".split()
    decode = lambda ids: " ".join(words[i] for i in ids)  # noqa: E731
    docs = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13], [1, 2, 0, 5]]
    tokens = np.array([t for d in docs for t in d], dtype=np.uint16)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    doc_indices = np.array([2, 0, 3])
    path = tmp_path / "embeddings.f16"
    out = np.memmap(path, dtype=np.float16, mode="w+", shape=(3, embedder.dim))
    calls: list[int] = []
    embed_documents(
        embedder, decode, tokens, offsets, doc_indices, out=out, max_tokens=3, batch_size=1, chunk=2, progress=calls.append
    )
    out.flush()
    assert calls == [1, 1, 1]
    expected = embed_texts(embedder, ["as investors sold", "the cat sat", "cat sat the"], batch_size=1)
    back = np.memmap(path, dtype=np.float16, mode="r", shape=(3, embedder.dim))
    np.testing.assert_allclose(_f32(back), _f32(expected), atol=2e-3)
    with pytest.raises(ValueError, match="shape"):
        embed_documents(embedder, decode, tokens, offsets, doc_indices, out=np.zeros((2, embedder.dim), np.float16))


@pytest.mark.slow
def test_local_model_folder_loads_with_the_network_off(tmp_path, monkeypatch):
    folder = tmp_path / "my-model"
    source = model_files.packaged_model_dir()
    for path in source.rglob("*"):  # a copy made of symlinks: same files, a different folder
        if path.is_file():
            link = folder / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)

    def no_network(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    loaded = load_embedder(str(folder))
    assert loaded.name == str(folder.resolve()) and loaded.dim == 384
    assert loaded.fingerprint == model_files.model_fingerprint(source)
    assert embed_texts(loaded, ["Hello"]).shape == (1, 384)


@pytest.mark.slow
def test_bad_model_paths_are_user_errors(tmp_path):
    with pytest.raises(PackprepError, match="not found") as missing:
        load_embedder(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(missing.value)
    with pytest.raises(PackprepError, match="not found"):
        load_embedder("sentence-transformers/all-mpnet-base-v2")  # hub names are not fetched
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackprepError, match="modules.json"):
        load_embedder(str(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(PackprepError, match="cannot load"):
        load_embedder(str(tmp_path / "broken"))


def test_fingerprint_sees_config_changes_and_skips_hidden_files(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 384}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 100)
    before = model_files.model_fingerprint(tmp_path)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "lock").write_text("x")
    assert model_files.model_fingerprint(tmp_path) == before
    (tmp_path / "config.json").write_text('{"hidden_size": 768}')
    assert model_files.model_fingerprint(tmp_path) != before


# ---------------------------------------------------------------------------- which embeddings a pack uses


@pytest.fixture
def static_stub(tmp_path, monkeypatch) -> None:
    """--embedder static distilled over the tokens of conftest's sentences only (the full
    distillation takes about two minutes), cached in tmp_path."""
    from packprep.stages import static_embed
    from tests.conftest import SENTENCES

    source = model_files.packaged_model_dir()
    tokenizer = static_embed._plain_tokenizer(source / "tokenizer.json")
    ids = np.concatenate([e.ids for e in tokenizer.encode_batch(SENTENCES, add_special_tokens=False)] + [[0, 100, 101, 102, 103]])
    distilled = static_embed.distill(source, token_ids=ids)
    monkeypatch.setenv("PACKPREP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(static_embed, "distill", lambda src: distilled)


@pytest.fixture
def work(tmp_path) -> str:
    from packprep.pipeline import tokenize
    from tests.conftest import make_documents, write_jsonl

    return str(tokenize(write_jsonl(tmp_path / "docs.jsonl", make_documents(24, seed=1)), tmp_path / "work").path)


def cli(*args: str):
    from typer.testing import CliRunner

    from packprep.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def embedder_of(out) -> str:
    return json.loads((out / "manifest.json").read_text())["embed_config"]["model"]


ICP = ["--strategy", "icp", "--seq-len", "128", "-q"]


@pytest.mark.slow  # MiniLM distils the stub and embeds the fit sample
def test_pack_of_a_store_uses_the_embedder_it_was_embedded_with(static_stub, work, tmp_path):
    from pathlib import Path

    work = Path(work)
    assert cli("embed", work, "--embedder", "static", "-q").exit_code == 0
    static_file = work / "embeddings.static.npy"
    before = (static_file.stat().st_mtime_ns, sha(static_file))
    result = cli("pack", work, tmp_path / "out", *ICP)
    assert result.exit_code == 0, result.output
    assert embedder_of(tmp_path / "out") == "static"
    assert (static_file.stat().st_mtime_ns, sha(static_file)) == before  # reused, not re-embedded
    assert not (work / "embeddings.npy").exists() and not (work / "embed.json").exists()  # MiniLM never ran


@pytest.mark.slow  # MiniLM distils the stub and embeds the fit sample
def test_embeddings_of_two_embedders_sit_side_by_side(static_stub, work, tmp_path):
    from pathlib import Path

    work = Path(work)
    assert cli("embed", work, "-q").exit_code == 0
    assert cli("embed", work, "--embedder", "static", "-q").exit_code == 0
    files = {name: (work / name).stat().st_mtime_ns for name in ("embeddings.npy", "embeddings.static.npy")}
    assert np.load(work / "embeddings.npy").shape == np.load(work / "embeddings.static.npy").shape == (24, 384)

    ambiguous = cli("pack", work, tmp_path / "a", *ICP)
    assert ambiguous.exit_code == 2
    assert ambiguous.output.count("\n") == 1 and "--embedder" in ambiguous.output, ambiguous.output
    assert "--embedder minilm" in ambiguous.output and "--embedder static" in ambiguous.output
    assert not (tmp_path / "a").exists()

    for embedder in ("static", "minilm", "static"):  # switching back costs nothing
        out = tmp_path / f"out-{embedder}"
        result = cli("pack", work, out, *ICP, "--embedder", embedder)
        assert result.exit_code == 0, result.output
        assert embedder_of(out) == ("static" if embedder == "static" else DEFAULT_MODEL)
    again = cli("embed", work)
    assert again.exit_code == 0 and "reusing the stored embeddings" in again.output
    assert {name: (work / name).stat().st_mtime_ns for name in files} == files
    from packprep.store.embeddings import load_embeddings  # what inspect reads: the embedder the output names

    assert np.array_equal(load_embeddings(work, "static"), np.load(work / "embeddings.static.npy"))
    assert np.array_equal(load_embeddings(work), np.load(work / "embeddings.npy"))


@pytest.mark.slow
def test_a_raw_corpus_without_embedder_gets_minilm(tmp_path):
    from tests.conftest import make_documents, write_jsonl

    corpus = write_jsonl(tmp_path / "docs.jsonl", make_documents(12, seed=2))
    assert cli("pack", corpus, tmp_path / "out", *ICP).exit_code == 0
    assert embedder_of(tmp_path / "out") == DEFAULT_MODEL
    assert (tmp_path / "out" / "work" / "embeddings.npy").is_file()


def sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # MiniLM distils the stub and embeds the fit sample
def test_static_fit_is_not_redone_after_an_interrupt(static_stub, work, tmp_path, monkeypatch):
    from packprep.pipeline import semantic
    from packprep.config import EmbedConfig
    from packprep.pipeline import tokenize
    from packprep.store import DocStore
    from packprep.stages import embed as stage

    original_embed_documents, original_embed_texts = stage.embed_documents, stage.embed_texts

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the fit, in the first chunk

    monkeypatch.setattr(stage, "embed_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        semantic.embed(DocStore.open(work), config=EmbedConfig(model="static"))
    monkeypatch.setattr(stage, "embed_documents", original_embed_documents)
    minilm_calls: list[int] = []

    def counted(embedder, texts, **kwargs):
        if embedder.name == DEFAULT_MODEL:
            minilm_calls.append(len(texts))
        return original_embed_texts(embedder, texts, **kwargs)

    monkeypatch.setattr(stage, "embed_texts", counted)
    resumed = np.asarray(semantic.embed(DocStore.open(work), config=EmbedConfig(model="static")))
    assert minilm_calls == []  # the fit sample was not embedded with MiniLM again
    clean_store = tokenize(DocStore.open(work).manifest["source"]["path"], tmp_path / "clean")
    clean = np.asarray(semantic.embed(clean_store, config=EmbedConfig(model="static")))
    assert minilm_calls == [24] and resumed.tobytes() == clean.tobytes()


def test_progress_shows_this_runs_rate_and_the_time_left():
    from packprep.progress import _rate_text

    # 100 documents reused from an interrupted run, 50 embedded in 10 s, 400 in all: 250 left at 5/s.
    assert _rate_text({"items": 50, "tokens": 0, "resumed": 100}, 10.0, 400, "docs") == "5 docs/s  0:00:50 left"
    assert _rate_text({"items": 7200, "tokens": 0, "resumed": 0}, 3600.0, 14400, "docs") == "2 docs/s  1:00:00 left"
    assert _rate_text({"items": 10, "tokens": 2_000_000, "resumed": 0}, 2.0, None, "docs") == "5 docs/s  1.00M tok/s"
