"""Static embedder: distilled from the packaged MiniLM over only the tokens these tests use, so it stays fast.

The full-vocabulary distillation (about two minutes on two cores) never runs here: where a
test goes through ``load_embedder("static")``, ``static_embed.distill`` is replaced by the
subset distillation and the cache lives in a temporary folder. That the full distillation
equals model2vec's ``distill`` is checked by benchmarks/bench_model2vec.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # distils and fits the static embedder against MiniLM: make test-fast leaves it out

from packprep.config import EmbedConfig
from packprep.pipeline import tokenize
from packprep.pipeline.semantic import embed
from packprep.stages import static_embed
from packprep.stages.embed import embed_texts, load_embedder
from packprep.stages.model_files import model_fingerprint, packaged_model_dir
from packprep.stages.order import icp_order
from packprep.stages.static_embed import (
    RECIPE,
    StaticModel,
    FIT,
    distill,
    fit_sample,
    fit_static_model,
    fitted_fingerprint,
    distiller_version,
    load_static_model,
    model2vec_vocabulary,
    static_fingerprint,
)
from tests.helpers import PAIRED_TEXTS, TOPICS, labelled_corpus

TEXTS = PAIRED_TEXTS  # the same pairs MiniLM is tested on
SPECIALS = [0, 100, 101, 102, 103]  # [PAD] [UNK] [CLS] [SEP] [MASK]


@pytest.fixture(scope="module")
def source() -> Path:
    return packaged_model_dir()


@pytest.fixture(scope="module")
def distilled(source) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, empty) distilled over the tokens of TEXTS and of the labelled test corpus,
    plus the 300 most frequent word pieces so that there are more tokens than PCA dimensions
    (model2vec skips the PCA otherwise)."""
    tokenizer = static_embed._plain_tokenizer(source / "tokenizer.json")
    corpus_text = [" ".join(s) + " Note 0123456789:" for s in TOPICS.values()]
    encodings = tokenizer.encode_batch(TEXTS + corpus_text, add_special_tokens=False)
    frequent = np.arange(300) + tokenizer.token_to_id("the")
    return distill(source, token_ids=np.concatenate([e.ids for e in encodings] + [frequent, SPECIALS]))


@pytest.fixture(scope="module")
def model(source, distilled) -> StaticModel:
    vectors, empty = distilled
    return StaticModel(vectors=vectors, empty=empty, tokenizer=static_embed._plain_tokenizer(source / "tokenizer.json"))


@pytest.fixture
def cache(tmp_path, monkeypatch, distilled) -> list[Path]:
    """PACKPREP_CACHE in tmp_path, and a distill that records its calls and returns the subset model."""
    calls: list[Path] = []
    monkeypatch.setenv("PACKPREP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(static_embed, "distill", lambda src: (calls.append(src), distilled)[1])
    return calls


def test_subset_distillation_fills_only_its_tokens(model):
    vectors, empty = model.vectors, model.empty
    used = np.flatnonzero(np.abs(vectors).sum(axis=1))
    assert vectors.shape[0] == 30522 and vectors.dtype == np.float32
    assert len(used) > RECIPE["pca_dims"] and vectors.shape[1] == RECIPE["pca_dims"]
    assert not np.isin(SPECIALS, used).any()  # special tokens are zero rows even when asked for
    guitar = model.tokenizer.token_to_id("guitar")
    assert guitar in used and model.tokenizer.token_to_id("zebra") not in used
    np.testing.assert_allclose(np.linalg.norm(empty), 1.0, rtol=1e-5)


def test_model2vec_vocabulary_order_gives_the_sif_ranks(source):
    from model2vec.distill.inference import compute_weights

    _, vocabulary = model2vec_vocabulary(source / "tokenizer.json")
    # bert-base-uncased ids: [PAD] 0, [unused0-98] 1-99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103,
    # [unused99-993] 104-998, "!" 999, ..., "the" 1996, ..., 30521. model2vec keeps [PAD], [UNK]
    # and everything from "!": 30522 - 994 unused - [CLS] [SEP] [MASK] = 29,525 tokens.
    assert len(vocabulary) == 29525 and vocabulary[:4] == ["[PAD]", "[UNK]", "!", '"']
    assert vocabulary.index("the") == 1996 - 997 and vocabulary.index("guitar") == 2858 - 997
    assert not any(t.startswith("[unused") or t in ("[CLS]", "[SEP]", "[MASK]") for t in vocabulary)
    # By hand: "the" has Zipf rank 999 + 2 = 1001, p = (1/1001) / sum(1/r, r = 2..29526)
    # = 0.000999 / (ln 29526 + 0.5772 - 1) = 1.0121e-4, so its SIF weight a / (a + p) is
    # 1e-4 / (1e-4 + 1.0121e-4) = 0.4970; "!" (rank 4): 1e-4 / (1e-4 + 0.25 / 9.8703) = 0.003933.
    weights = compute_weights(len(vocabulary), sif_coefficient=RECIPE["sif_coefficient"])
    assert weights[999] == pytest.approx(0.4970, rel=1e-3) and weights[2] == pytest.approx(0.003933, rel=1e-3)


def test_distilled_vectors_are_minilm_states_times_their_sif_weights(source):
    """Fewer tokens than pca_dims: model2vec skips the PCA, so each row is the token's own
    MiniLM state (mean over ``[CLS] t [SEP]``) times its weight, under the source's ids."""
    import torch
    from transformers import AutoModel

    tokenizer = static_embed._plain_tokenizer(source / "tokenizer.json")
    ids = [tokenizer.token_to_id(t) for t in ("!", "the", "guitar")]
    assert ids == [999, 1996, 2858]
    vectors, empty = distill(source, token_ids=np.array(ids + [103, 5]))  # [MASK] and [unused4]: left out
    encoder = AutoModel.from_pretrained(str(source), local_files_only=True).eval()
    with torch.inference_mode():
        states = encoder(input_ids=torch.tensor([[101, i, 102] for i in ids])).last_hidden_state.mean(1).numpy()
        cls_sep = encoder(input_ids=torch.tensor([[101, 102]])).last_hidden_state.mean(1).numpy()[0]
    assert vectors.shape == (30522, 384) and np.flatnonzero(np.abs(vectors).sum(axis=1)).tolist() == ids
    # The weights of ranks 4, 1001 and 1863 (see the test above): 0.003933, 0.4970, 0.6477.
    np.testing.assert_allclose(vectors[ids], states * np.array([[0.003933], [0.4970], [0.6477]]), rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(empty, cls_sep / np.linalg.norm(cls_sep), atol=1e-5)  # no PCA: the [CLS] [SEP] state


def test_embed_texts_with_static_model(model):
    embedder = static_embed_embedder(model)
    calls: list[int] = []
    vectors = embed_texts(embedder, TEXTS + [""], batch_size=3, progress=calls.append)
    assert vectors.shape == (7, model.vectors.shape[1]) and vectors.dtype == np.float16
    assert calls == [3, 3, 1]
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    wide = embed_texts(embedder, TEXTS + ["", "[SEP] [UNK]"], batch_size=4, dtype=np.float32)
    single = np.concatenate([embed_texts(embedder, [t], dtype=np.float32) for t in TEXTS])
    np.testing.assert_allclose(wide[:6], single, atol=1e-6)
    np.testing.assert_allclose(wide[6:], [model.empty, model.empty])  # no known token: the empty-text vector
    # Sum of token vectors: a text repeated embeds like itself.
    np.testing.assert_allclose(embed_texts(embedder, [TEXTS[0] + " " + TEXTS[0]], dtype=np.float32)[0], wide[0], atol=1e-6)
    cos = wide[:6] @ wide[:6].T
    assert cos[0, 1] > cos[0, 2] + 0.2
    assert cos[3, 4] > cos[3, 5] + 0.2


def test_icp_on_static_vectors_groups_topics(tmp_path, model):
    path, topic_of = labelled_corpus(tmp_path, per_topic=10)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    vectors = embed_texts(static_embed_embedder(model), [r["text"] for r in records], dtype=np.float32)
    labels = np.array([topic_of[r["id"]] for r in records])[icp_order(np.arange(len(records)), vectors, k=5, seed=0)]
    assert (labels[1:] == labels[:-1]).mean() > 0.75  # a random order: about 0.23


def test_cache_is_written_once_and_reused(cache, source, tmp_path):
    first = load_embedder("static")
    assert len(cache) == 1 and cache[0] == source
    assert (first.name, first.dim) == ("static", first.model.vectors.shape[1])
    assert first.fingerprint == static_fingerprint(model_fingerprint(source))
    folder = tmp_path / "cache" / f"static-{first.fingerprint[:16]}"
    assert sorted(p.name for p in folder.iterdir()) == ["empty.npy", "static.json", "tokenizer.json", "vectors.npy"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left behind
    second = load_embedder("static")
    assert len(cache) == 1 and second.fingerprint == first.fingerprint
    assert np.array_equal(second.model.vectors, first.model.vectors)
    assert json.loads((folder / "static.json").read_text())["distiller"] == distiller_version()
    assert distiller_version().startswith("model2vec 0.10.")  # the version pyproject.toml allows
    _, other = load_static_model(source, "another source", cache_dir=tmp_path / "cache")
    assert len(cache) == 2 and other != first.fingerprint


def test_another_recipe_or_model2vec_version_is_distilled_again(cache, source, tmp_path, monkeypatch):
    first = load_embedder("static")
    assert first.fingerprint == static_fingerprint(model_fingerprint(source), RECIPE, distiller=distiller_version())
    assert static_fingerprint(model_fingerprint(source), {**RECIPE, "pca_dims": 128}) != first.fingerprint
    monkeypatch.setattr(static_embed, "distiller_version", lambda: "model2vec 0.11.0")
    second = load_embedder("static")
    assert len(cache) == 2 and second.fingerprint != first.fingerprint
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        f"static-{f[:16]}" for f in (first.fingerprint, second.fingerprint))


@pytest.fixture(scope="module")
def minilm():
    return load_embedder()


@pytest.fixture(scope="module")
def labelled_texts(tmp_path_factory) -> list[str]:
    path, _ = labelled_corpus(tmp_path_factory.mktemp("fit"), per_topic=6)
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_fit_brings_held_out_documents_closer_to_minilm(model, minilm, labelled_texts):
    targets = embed_texts(minilm, labelled_texts, dtype=np.float32)
    fit_rows, held = np.arange(12), np.arange(12, len(labelled_texts))
    fitted = fit_static_model(model, [labelled_texts[i] for i in fit_rows], targets[fit_rows],
                              map_ridge=FIT["map_ridge"], token_ridge=FIT["token_ridge"])
    assert fitted.vectors.shape == (model.vectors.shape[0], minilm.dim) and fitted.vectors.dtype == np.float32
    assert not fitted.vectors[SPECIALS].any()  # special tokens stay zero rows
    # A huge token ridge leaves only the linear map: the token step must add to it on held-out documents.
    mapped = fit_static_model(model, [labelled_texts[i] for i in fit_rows], targets[fit_rows],
                              map_ridge=FIT["map_ridge"], token_ridge=1e6)
    held_texts = [labelled_texts[i] for i in held]
    cosines = [(embed_texts(static_embed_embedder(m), held_texts, dtype=np.float32) * targets[held]).sum(axis=1).mean()
               for m in (mapped, fitted)]
    assert cosines[1] > cosines[0] + 0.005 and cosines[1] > 0.8, cosines  # 0.869 -> 0.881 when written
    again = fit_static_model(model, [labelled_texts[i] for i in fit_rows], targets[fit_rows],
                             map_ridge=FIT["map_ridge"], token_ridge=FIT["token_ridge"])
    assert np.array_equal(again.vectors, fitted.vectors) and np.array_equal(again.empty, fitted.empty)
    with pytest.raises(ValueError):
        fit_static_model(model, [], targets[:0], map_ridge=1.0, token_ridge=1.0)


def test_fit_sample_is_seeded_sorted_and_capped():
    sample = fit_sample(100, size=10, seed=0)
    assert sample.dtype == np.int64 and len(np.unique(sample)) == 10 and np.all(np.diff(sample) > 0)
    assert np.array_equal(sample, fit_sample(100, size=10, seed=0))
    assert not np.array_equal(sample, fit_sample(100, size=10, seed=1))
    assert fit_sample(7, size=10, seed=0).tolist() == list(range(7))


class Recorder:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def info(self, message: str) -> None:
        self.messages.append(message)

    def track(self, description: str, *, total: int | None = None, unit: str = "docs"):
        import contextlib

        return contextlib.nullcontext(lambda n=1, **extra: None)


def test_semantic_embed_with_static_model_fits_it_to_the_store(cache, tmp_path, minilm):
    path, _ = labelled_corpus(tmp_path / "corpus", per_topic=3)
    reporter = Recorder()
    store = tokenize(path, tmp_path / "work")
    vectors = embed(store, config=EmbedConfig(model="static"), reporter=reporter)
    assert vectors.shape == (12, minilm.dim) and vectors.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(np.asarray(vectors, np.float32), axis=1), 1.0, atol=2e-3)
    assert reporter.messages == [
        "embed: distilling the static model from MiniLM (first use only, about two minutes)",
        "embed: fitting static vectors on 12 sampled documents embedded with MiniLM",
    ]
    manifest = json.loads((store.path / "embed.static.json").read_text())
    assert manifest["model"] == "static" and manifest["dim"] == minilm.dim
    assert manifest["fingerprint"] == fitted_fingerprint(load_embedder("static").fingerprint)
    assert manifest["fingerprint"] != fitted_fingerprint(load_embedder("static").fingerprint, {**FIT, "token_ridge": 1.0})
    reporter.messages.clear()
    assert np.array_equal(embed(store, config=EmbedConfig(model="static"), reporter=reporter), vectors)  # reused
    assert reporter.messages == ["embed: reusing the stored embeddings"] and len(cache) == 1
    # A second store of the same corpus: fitted and embedded again, byte for byte the same.
    other = embed(tokenize(path, tmp_path / "again"), config=EmbedConfig(model="static"))
    assert np.asarray(other).tobytes() == np.asarray(vectors).tobytes()


def static_embed_embedder(model: StaticModel):
    from packprep.stages.embed import Embedder

    return Embedder(name="static", dim=model.vectors.shape[1], fingerprint="test", model=model)


def test_cli_embedder_static_refuses_a_model(tmp_path):
    from typer.testing import CliRunner

    from packprep.cli import app

    result = CliRunner().invoke(app, ["embed", str(tmp_path), "--embedder", "static", "--model", str(tmp_path)])
    assert result.exit_code == 2 and "takes no --model" in result.output


def test_icp_with_the_static_embedder_uses_and_records_its_calibrated_threshold(cache, tmp_path):
    from packprep.config import DEFAULT_ICP_SEMANTIC_THRESHOLD, PackConfig
    from packprep.pipeline import pack
    from packprep.reader import PackedDataset

    path, _ = labelled_corpus(tmp_path / "corpus", per_topic=3)
    out = pack(path, tmp_path / "out", config=PackConfig(strategy="icp", seq_len=64), embed_config=EmbedConfig(model="static"))
    calibration = json.loads((out / "work" / "embed.static.json").read_text())["calibration"]
    assert calibration["reference"] == DEFAULT_ICP_SEMANTIC_THRESHOLD and calibration["pairs"] > 0
    assert calibration["method"] in ("sample", "fallback") and calibration["threshold"] > DEFAULT_ICP_SEMANTIC_THRESHOLD
    recorded = PackedDataset(out).manifest["semantic_threshold"]
    assert recorded == {"value": calibration["threshold"], "source": f"calibrated to MiniLM's {DEFAULT_ICP_SEMANTIC_THRESHOLD}",
                        "embedder": "static", "calibration": calibration}
    explicit = pack(path, tmp_path / "explicit", config=PackConfig(strategy="icp", seq_len=64, semantic_threshold=0.5),
                    embed_config=EmbedConfig(model="static"))
    assert PackedDataset(explicit).manifest["semantic_threshold"] == {"value": 0.5, "source": "--semantic-threshold", "embedder": "static"}
    assert sum(PackedDataset(explicit).manifest["dropped"].values()) > 0  # 0.5 on the static scale drops related documents


def test_calibration_pairs_of_a_partial_sample_come_from_documents_the_fit_did_not_see(model, minilm, labelled_texts):
    from packprep.stages.static_embed import calibrate_static, held_out_pair_cosines, neighbour_pair_cosines, static_embed

    targets = embed_texts(minilm, labelled_texts, dtype=np.float32)
    fitted = fit_static_model(model, labelled_texts, targets, map_ridge=FIT["map_ridge"], token_ridge=FIT["token_ridge"])
    k = FIT["calibration"]["k"]
    inside = neighbour_pair_cosines(static_embed(fitted, labelled_texts), targets, k=k)
    held = held_out_pair_cosines(model, labelled_texts, targets, k=k, map_ridge=FIT["map_ridge"], token_ridge=FIT["token_ridge"])
    # Pairs inside each half only: 2 halves of 12 documents hold at most 2 x (12 x 11 / 2) pairs.
    assert len(held[0]) == len(held[1]) and 0 < len(held[0]) <= 132
    assert np.all(np.abs(held[0]) <= 1 + 1e-6) and not np.isin(held[0], inside[0]).all()  # another model's cosines
    partial = calibrate_static(model, fitted, labelled_texts, targets, whole_store=False)
    whole = calibrate_static(model, fitted, labelled_texts, targets, whole_store=True)
    assert (partial.pairs, whole.pairs) == (len(held[0]), len(inside[0]))
