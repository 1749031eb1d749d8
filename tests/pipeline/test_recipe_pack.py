"""packprep pack --recipe: shares and totals, up- and down-sampling, the split, decontamination,
provenance, reruns and bad input (issue 15's acceptance tests)."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from packprep import PackedDataset
from packprep.cli import app
from packprep.verify import verify_output
from tests.helpers import REPO_ROOT as ROOT

CORPUS = ROOT / "examples" / "corpus"
runner = CliRunner()

# examples/corpus split into three sources by the prefix of each id (README of examples/).
THREE_SOURCES = """
[[source]]
name = "kernel"
path = "{corpus}"
id_prefix = "linux-doc/"
weight = 0.5
[[source]]
name = "books"
path = "{corpus}"
id_prefix = ["kjv/", "austen/"]
weight = 0.3
[[source]]
name = "short"
path = "{corpus}"
id_prefix = ["fortunes/", "devil/", "jargon/"]
weight = 0.2
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One tokenized examples/corpus for every test here: the three sources share its store."""
    return tmp_path_factory.mktemp("cache")


def write_recipe(folder: Path, body: str, *, cache: Path | None = None, pack: str = 'strategy = "eos"\nseq_len = 512') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    head = f'cache = "{cache}"\n' if cache else ""
    path = folder / "recipe.toml"
    path.write_text(f"{head}[pack]\n{pack}\n{body.format(corpus=CORPUS)}", encoding="utf-8")
    return path


def run(*args: object):
    result = runner.invoke(app, ["pack", *map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result


def sources_of(out: Path) -> dict:
    result = runner.invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["sources"]


def packed_ids(ds: PackedDataset) -> list[str]:
    reason = np.load(ds.path / "doc_dropped.npy")
    return [ds.doc_ids[int(j)] for j in np.flatnonzero(reason == 0)]


@pytest.mark.parametrize("tokens", [300_000, 1_000_000, 3_000_000])
def test_shares_and_total_on_three_sources_from_the_example_corpus(tmp_path, cache, tokens):
    # 300k down-samples all three; 1M up-samples "short" (~150k tokens for a 200k share); 3M all.
    recipe = write_recipe(tmp_path, f"[mix]\ntokens = {tokens}\n" + THREE_SOURCES, cache=cache)
    run("--recipe", recipe, tmp_path / "out")
    ds = PackedDataset(tmp_path / "out")
    sources = sources_of(tmp_path / "out")
    total = sum(s["tokens"] for s in sources.values())
    assert total == ds.manifest["counts"]["num_tokens"]
    assert abs(total - tokens) <= 0.01 * tokens
    for name, weight in (("kernel", 0.5), ("books", 0.3), ("short", 0.2)):
        assert abs(sources[name]["tokens"] / total - weight) <= 0.005, (name, sources[name])
    manifest_sources = {s["name"]: s for s in ds.manifest["recipe"]["sources"]}
    for name, entry in manifest_sources.items():
        upsampled = entry["target_tokens"] > entry["available_tokens"]
        assert (entry["passes"] >= 1) == upsampled and (entry["repeats"] > 0) == upsampled
        assert sources[name]["repeats"] == entry["repeats"] and sources[name]["documents"] == entry["documents"]
    assert manifest_sources["short"]["repeats"] > 0 if tokens >= 1_000_000 else manifest_sources["short"]["repeats"] == 0
    assert verify_output(tmp_path / "out") == []


def test_without_a_target_the_total_repeats_no_source(tmp_path, cache):
    recipe = write_recipe(tmp_path, THREE_SOURCES, cache=cache)
    run("--recipe", recipe, tmp_path / "out")
    entries = {s["name"]: s for s in PackedDataset(tmp_path / "out").manifest["recipe"]["sources"]}
    assert all(e["repeats"] == 0 and e["passes"] <= 1 for e in entries.values())
    # "short" has the fewest tokens for its share: it is taken whole, the others down to their shares.
    assert entries["short"]["tokens"] == entries["short"]["available_tokens"]
    assert entries["kernel"]["tokens"] < entries["kernel"]["available_tokens"]
    total = sum(e["tokens"] for e in entries.values())
    assert abs(entries["kernel"]["tokens"] / total - 0.5) <= 0.005


def test_provenance_every_document_carries_its_source(tmp_path, cache):
    recipe = write_recipe(tmp_path, "[mix]\ntokens = 500_000\n" + THREE_SOURCES, cache=cache)
    run("--recipe", recipe, tmp_path / "out")
    ds = PackedDataset(tmp_path / "out")
    prefixes = {"kernel": ("linux-doc/",), "books": ("kjv/", "austen/"), "short": ("fortunes/", "devil/", "jargon/")}
    sources = ds.doc_sources
    assert len(sources) == len(ds.doc_ids)
    for j in range(len(sources)):
        assert ds.doc_ids[j].startswith(prefixes[sources[j]])
    row = ds[3]
    assert {str(sources[d]) for d in row["doc_index"] if d >= 0} <= set(prefixes)
    manifest = ds.manifest["recipe"]
    assert manifest["text"] == recipe.read_text() and manifest["sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert set(sources_of(tmp_path / "out")) == {"kernel", "books", "short"}
    assert PackedDataset(tmp_path / "out").doc_sources is not None


def unique_documents(n: int, seed: int, prefix: str) -> list[dict]:
    """Documents of random words: no 13-gram is shared by chance, so decontamination only finds what a test plants."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(5000)]
    return [{"id": f"{prefix}-{i}", "text": " ".join(rng.choice(words) for _ in range(rng.randint(30, 120)))} for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


SPLIT = """
[[source]]
name = "a"
path = "a.jsonl"
weight = 1
[[source]]
name = "b"
path = "b.jsonl"
weight = 1
[split]
val_fraction = 0.2
"""


def test_split_no_val_document_in_train_and_a_growing_source_moves_none(tmp_path):
    docs_a, docs_b = unique_documents(300, 1, "a"), unique_documents(300, 2, "b")
    write_jsonl(tmp_path / "a.jsonl", docs_a[:200])
    write_jsonl(tmp_path / "b.jsonl", docs_b)
    recipe = write_recipe(tmp_path, SPLIT)
    run("--recipe", recipe, tmp_path / "before")
    train, val = PackedDataset(tmp_path / "before" / "train"), PackedDataset(tmp_path / "before" / "val")
    train_ids, val_ids = set(packed_ids(train)), set(packed_ids(val))
    assert val_ids and not train_ids & val_ids
    assert 0.1 < len(val_ids) / 500 < 0.3
    assert set(val.doc_sources) == {"a", "b"}
    for out in ("train", "val"):
        assert verify_output(tmp_path / "before" / out) == []

    write_jsonl(tmp_path / "a.jsonl", docs_a)  # source a grows by 100 documents
    run("--recipe", recipe, tmp_path / "after")
    after_val = set(packed_ids(PackedDataset(tmp_path / "after" / "val")))
    old = {d["id"] for d in docs_a[:200] + docs_b}
    assert after_val & old == val_ids  # no old document moved between train and val
    assert not set(packed_ids(PackedDataset(tmp_path / "after" / "train"))) & after_val


def test_decontamination_drops_the_documents_holding_planted_benchmark_excerpts(tmp_path):
    docs = unique_documents(200, 3, "d")
    write_jsonl(tmp_path / "a.jsonl", docs)
    planted = [5, 77, 150]
    bench = [{"id": f"q{k}", "text": "Question: " + " ".join(docs[d]["text"].split()[5:25]).upper() + "?"} for k, d in enumerate(planted)]
    write_jsonl(tmp_path / "evals" / "mmlu.jsonl", bench[:2])
    write_jsonl(tmp_path / "evals" / "arc.jsonl", bench[2:])
    # Twelve words of a document, one short of an n-gram: not a match.
    (tmp_path / "evals" / "near.txt").write_text(" ".join(docs[9]["text"].split()[:12]))
    body = '[[source]]\nname = "a"\npath = "a.jsonl"\nweight = 1\n[decontaminate]\npaths = ["evals/"]\n'
    run("--recipe", write_recipe(tmp_path, body), tmp_path / "out")
    ds = PackedDataset(tmp_path / "out")
    reason = np.load(ds.path / "doc_dropped.npy")
    dropped = {ds.doc_ids[int(j)] for j in np.flatnonzero(reason)}
    assert dropped == {f"d-{d}" for d in planted}
    assert ds.manifest["dropped"]["decontaminated"] == 3
    assert not dropped & set(packed_ids(ds))
    listing = json.loads(runner.invoke(app, ["inspect", str(ds.path), "--dropped", "--json"]).stdout)["dropped"]
    matched = {p["dropped"]["id"]: p["kept"]["id"] for p in listing["pairs"]}
    assert matched == {"d-5": "evals/mmlu.jsonl", "d-77": "evals/mmlu.jsonl", "d-150": "evals/arc.jsonl"}
    assert {p["reason"] for p in listing["pairs"]} == {"decontaminated"}
    assert sources_of(ds.path)["a"]["dropped"] == {"decontaminated": 3}


def test_reruns_are_byte_identical_and_the_command_line_overrides_the_recipe(tmp_path, cache):
    recipe = write_recipe(tmp_path, "[mix]\ntokens = 200_000\n" + THREE_SOURCES + "[split]\nval_documents = 5\n", cache=cache)

    def digest(out: Path) -> dict[str, str]:
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*")) if p.is_file() and "work" not in p.parts}

    run("--recipe", recipe, tmp_path / "out", "--seq-len", 256)
    first = digest(tmp_path / "out")
    run("--recipe", recipe, tmp_path / "out", "--seq-len", 256)  # up to date: nothing changes
    assert digest(tmp_path / "out") == first
    shutil.rmtree(tmp_path / "out")
    run("--recipe", recipe, tmp_path / "out", "--seq-len", 256)
    assert digest(tmp_path / "out") == first
    assert PackedDataset(tmp_path / "out" / "train").seq_len == 256  # the recipe says 512
    assert len(set(packed_ids(PackedDataset(tmp_path / "out" / "val")))) == 15  # 5 per source


@pytest.mark.slow  # the static embedder's fit embeds a sample with MiniLM
def test_icp_orders_across_the_mixed_set_with_copies_a_pass_apart(tmp_path, cache):
    pytest.importorskip("sentence_transformers")
    body = "\n".join(
        f'[[source]]\nname = "{name}"\npath = "{CORPUS}"\nid_prefix = {prefix}\nweight = {weight}'
        for name, prefix, weight in (("kernel", '"linux-doc/"', 0.25), ("books", '["kjv/", "austen/"]', 0.25), ("short", '"devil/"', 0.5))
    )
    # The Devil's Dictionary (~25k tokens) for half of 60k: one whole pass and a sample, so copies exist.
    recipe = write_recipe(tmp_path, "[mix]\ntokens = 60_000\n" + body + "\n", cache=cache,
                          pack='strategy = "icp"\nembedder = "static"\nseq_len = 512')
    run("--recipe", recipe, tmp_path / "out")
    ds = PackedDataset(tmp_path / "out")
    assert ds.manifest["strategy"] == "icp" and verify_output(tmp_path / "out") == []
    entries = {s["name"]: s for s in ds.manifest["recipe"]["sources"]}
    assert [e["weight"] for e in entries.values()] == [0.25, 0.25, 0.5] and entries["short"]["repeats"] > 0
    sources = sources_of(tmp_path / "out")
    total = sum(s["tokens"] for s in sources.values())
    assert all(abs(sources[n]["tokens"] / total - w) <= 0.005 for n, w in (("kernel", 0.25), ("books", 0.25), ("short", 0.5)))
    # identical copies have identical embeddings, yet no row holds a document twice
    ids = [ds.doc_ids[j] for j in range(len(ds.doc_ids))]
    for i in range(len(ds)):
        row = [ids[d] for d in ds[i]["doc_index"] if d >= 0]
        pieces = [ids[d] for d in set(ds[i]["doc_index"].tolist()) if d >= 0]
        assert len(set(pieces)) == len(pieces), (i, row)


BAD = [
    ("weight = 0.5", "wieght = 0.5", "unknown key 'wieght' (did you mean 'weight'?)"),
    ("weight = 0.5", "weight = 0", "weight of source 'kernel' must be more than 0"),
    ('name = "books"', 'name = "kernel"', "duplicate source name 'kernel'"),
    ('id_prefix = "linux-doc/"', 'id_prefix = "nothing/"', "source 'kernel' has no documents whose id starts with 'nothing/'"),
    ("[mix]\ntokens = 100_000", "[mix]\ntokens = 100", "tokens = 100 cannot be met"),
    ("[split]\nval_fraction = 0.1", "[split]\nval_fraction = 1", "val_fraction must be in [0, 1), got 1"),
]


@pytest.mark.parametrize("old,new,message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path, cache, old, new, message):
    good = "[mix]\ntokens = 100_000\n" + THREE_SOURCES + "[split]\nval_fraction = 0.1\n"
    assert old in good
    recipe = write_recipe(tmp_path, good.replace(old, new, 1), cache=cache)
    result = runner.invoke(app, ["pack", "--recipe", str(recipe), str(tmp_path / "out"), "--quiet"])  # no progress lines
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "recipe.toml" in lines[0], result.stderr
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_source_path_names_the_line(tmp_path):
    recipe = write_recipe(tmp_path, '[[source]]\nname = "a"\npath = "gone.jsonl"\nweight = 1\n')
    result = runner.invoke(app, ["pack", "--recipe", str(recipe), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: {recipe}:6: [[source]] path of source 'a' does not exist")
    assert not (tmp_path / "out").exists()


def test_pack_corpus_out_is_unchanged_and_recipe_takes_out_alone(tmp_path, small_corpus):
    run(small_corpus, tmp_path / "plain")
    assert PackedDataset(tmp_path / "plain").doc_sources is None
    result = runner.invoke(app, ["pack", "--recipe", str(tmp_path / "r.toml"), str(small_corpus), str(tmp_path / "o")])
    assert result.exit_code == 2 and "with --recipe give OUT alone" in result.stderr


@pytest.mark.parametrize("against_val", [True, False])
def test_a_train_document_sharing_an_ngram_with_a_val_document_is_dropped(tmp_path, against_val):
    from packprep.stages.mix import split_hashes, val_mask

    docs = unique_documents(100, 4, "v")
    is_val = val_mask(split_hashes("a", [d["id"] for d in docs]), fraction=0.2)
    val_doc, train_doc = int(np.flatnonzero(is_val)[0]), int(np.flatnonzero(~is_val)[0])
    docs[train_doc]["text"] += " " + " ".join(docs[val_doc]["text"].split()[:15])  # 15 words of a val document
    write_jsonl(tmp_path / "a.jsonl", docs)
    body = f'[[source]]\nname = "a"\npath = "a.jsonl"\nweight = 1\n[split]\nval_fraction = 0.2\n[decontaminate]\nval = {str(against_val).lower()}\n'
    run("--recipe", write_recipe(tmp_path, body), tmp_path / "out")
    train = PackedDataset(tmp_path / "out" / "train")
    reason = np.load(train.path / "doc_dropped.npy")
    dropped = [train.doc_ids[int(j)] for j in np.flatnonzero(reason)]
    assert dropped == ([docs[train_doc]["id"]] if against_val else [])
    if against_val:
        pair = json.loads(runner.invoke(app, ["inspect", str(train.path), "--dropped", "--json"]).stdout)["dropped"]["pairs"][0]
        assert pair["kept"]["id"] == "val split"


def test_dedup_spans_sources_and_the_outputs_convert(tmp_path):
    a, b = unique_documents(60, 5, "a"), unique_documents(60, 6, "b")
    b[10]["text"] = a[20]["text"].upper()  # the same document in both sources (exact dedup ignores case)
    write_jsonl(tmp_path / "a.jsonl", a)
    write_jsonl(tmp_path / "b.jsonl", b)
    body = '[[source]]\nname = "a"\npath = "a.jsonl"\nweight = 1\n[[source]]\nname = "b"\npath = "b.jsonl"\nweight = 1\n'
    run("--recipe", write_recipe(tmp_path, body, pack='strategy = "random"\nseq_len = 64\ndedup = true\nformat = "megatron"'), tmp_path / "out")
    ds = PackedDataset(tmp_path / "out")
    reason = np.load(ds.path / "doc_dropped.npy")
    assert [ds.doc_ids[int(j)] for j in np.flatnonzero(reason)] == ["b-10"]
    assert ds.manifest["dropped"]["exact"] == 1 and sources_of(ds.path)["b"]["dropped"] == {"exact": 1}
    assert (ds.path / "megatron").is_dir() and verify_output(ds.path) == []
    assert runner.invoke(app, ["convert", str(ds.path), "--to", "arrow", "--quiet"]).exit_code == 0
    assert verify_output(ds.path) == []


def test_max_ngram_documents_ignores_boilerplate_many_train_documents_share(tmp_path):
    docs = unique_documents(100, 7, "m")
    licence = "this program is free software you can redistribute it under the terms of the licence"
    for d in docs[:30]:
        d["text"] += " " + licence  # boilerplate in 30 train documents
    docs[50]["text"] += " the quick brown fox jumps over the lazy dog near the river bank today"
    write_jsonl(tmp_path / "a.jsonl", docs)
    write_jsonl(tmp_path / "evals" / "e.jsonl", [{"text": "Q: " + licence}, {"text": "the quick brown fox jumps over the lazy dog near the river bank today"}])
    for limit, expected in (("", 31), ("max_ngram_documents = 10\n", 1)):
        body = f'[[source]]\nname = "a"\npath = "a.jsonl"\nweight = 1\n[decontaminate]\npaths = ["evals/"]\n{limit}'
        run("--recipe", write_recipe(tmp_path, body), tmp_path / "out", "--overwrite")
        ds = PackedDataset(tmp_path / "out")
        dropped = [ds.doc_ids[int(j)] for j in np.flatnonzero(np.load(ds.path / "doc_dropped.npy"))]
        assert len(dropped) == expected and "m-50" in dropped
