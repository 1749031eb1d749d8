"""The semantic threshold: calibrated per embedder, recorded in the manifest, and the drops shown by ``inspect --dropped``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from packprep.cli import app
from packprep.config import DEFAULT_ICP_SEMANTIC_THRESHOLD, DedupConfig, PackConfig
from packprep.pipeline import pack
from packprep.pipeline.selection import semantic_threshold
from packprep.stages.static_embed import calibrate_threshold, neighbour_pair_cosines
from tests.conftest import write_jsonl


def test_calibration_maps_a_monotone_compressed_space_back_to_the_same_decisions():
    reference = np.random.default_rng(0).uniform(0.3, 1.0, size=5000)
    for compress in (lambda r: 1 - (1 - r) / 3, lambda r: r**0.2, lambda r: np.tanh(3 * r)):
        static = compress(reference)
        calibration = calibrate_threshold(static, reference, reference=0.95)
        assert np.array_equal(static > calibration.threshold, reference > 0.95)
        assert calibration.method == "sample" and calibration.reference_above == calibration.agree == (reference > 0.95).sum()
        assert calibration.threshold > 0.95  # the compressed space needs a higher number for the same decisions


def test_calibration_with_a_noisy_static_space_drops_no_more_and_mostly_the_same():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0.3, 1.0, size=20000)
    static = 1 - (1 - reference) / 3 + rng.normal(0, 0.01, size=len(reference))
    calibration = calibrate_threshold(static, reference, reference=0.95, precision=0.9)
    above = static > calibration.threshold
    assert above.sum() <= (reference > 0.95).sum()
    assert (reference[above] > 0.95).mean() >= 0.9
    assert calibration.static_above == above.sum() and calibration.agree == (above & (reference > 0.95)).sum()
    # The uncalibrated number drops far more than the reference in the compressed space.
    assert (static > 0.95).sum() > 2 * (reference > 0.95).sum()


def test_calibration_without_pairs_above_the_reference_drops_nothing_sampled_or_falls_back():
    static, reference = np.array([0.97, 0.99, 0.9]), np.array([0.9, 0.93, 0.8])
    bare = calibrate_threshold(static, reference, reference=0.95)
    assert bare.threshold == 0.99 and not (static > bare.threshold).any() and bare.method == "sample"
    floor = calibrate_threshold(static, reference, reference=0.95, min_pairs=5, fallback=0.995)
    assert floor.threshold == 0.995 and floor.method == "fallback"
    empty = calibrate_threshold(np.zeros(0), np.zeros(0), reference=0.95)
    assert empty.threshold == 1.0 and empty.pairs == 0
    with pytest.raises(ValueError):
        calibrate_threshold(np.zeros(3), np.zeros(2), reference=0.95)


def test_neighbour_pairs_are_each_pair_once_with_both_cosines():
    angles = np.array([0.0, 0.1, 1.5, 1.6])
    static = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    reference = np.stack([np.cos(2 * angles), np.sin(2 * angles)], axis=1)
    s, r = neighbour_pair_cosines(static, reference, k=1)
    # Nearest neighbours under both: 0-1 and 2-3 (each listed by both ends, counted once).
    np.testing.assert_allclose(np.sort(s), np.cos([0.1, 0.1]))
    np.testing.assert_allclose(np.sort(r), np.cos([0.2, 0.2]))


def test_threshold_choice_per_embedder_and_an_explicit_one_wins():
    calibration = {"threshold": 0.993, "reference": DEFAULT_ICP_SEMANTIC_THRESHOLD, "method": "sample"}
    icp = PackConfig(strategy="icp")
    assert semantic_threshold(icp, "all-MiniLM-L6-v2", None) == {
        "value": DEFAULT_ICP_SEMANTIC_THRESHOLD, "source": "default", "embedder": "all-MiniLM-L6-v2"}
    static = semantic_threshold(icp, "static", calibration)
    assert static["value"] == 0.993 and static["source"].startswith("calibrated") and static["calibration"] == calibration
    explicit = semantic_threshold(PackConfig(strategy="icp", semantic_threshold=0.9), "static", calibration)
    assert explicit == {"value": 0.9, "source": "--semantic-threshold", "embedder": "static"}
    assert semantic_threshold(PackConfig(strategy="cluster"), "static", calibration) is None


RECORDS = [
    {"id": "a", "text": "The cat sat on the mat and looked out of the window."},
    {"id": "b", "text": "The cat sat on the mat and looked out the window."},
    {"id": "c", "text": "Interest rates rose sharply after the announcement."},
    {"id": "d", "text": "Interest rates rose sharply after the announcement."},
    {"id": "e", "text": "A recipe for sourdough bread needs flour, water and salt."},
]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """An icp output of RECORDS with semantic threshold 0.9: d an exact copy of c, b a paraphrase of a."""
    folder = tmp_path_factory.mktemp("dropped")
    path = write_jsonl(folder / "c.jsonl", RECORDS)
    return pack(path, folder / "out", config=PackConfig(strategy="icp", seq_len=32, semantic_threshold=0.9))


@pytest.mark.slow
def test_manifest_records_the_threshold_used(packed):
    manifest = json.loads((packed / "manifest.json").read_text())
    assert manifest["semantic_threshold"] == {"value": 0.9, "source": "--semantic-threshold", "embedder": "all-MiniLM-L6-v2"}
    assert manifest["dropped"] == {"exact": 1, "near": 0, "semantic": 1}


@pytest.mark.slow
def test_inspect_dropped_shows_the_kept_twin_reason_and_cosine(packed):
    result = CliRunner().invoke(app, ["inspect", str(packed), "--dropped"], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    semantic = next(line for line in lines if "semantic" in line and "The cat" in line)
    assert semantic.index("b") < semantic.index("a:")  # the dropped one, then its kept twin
    cosine = float(next(cell for cell in semantic.split("│") if cell.strip().startswith("0.9")).strip())
    assert 0.9 < cosine < 1.0
    assert any("exact" in line and "d" in line and "Interest rates" in line for line in lines)
    assert "2 dropped documents; semantic threshold 0.9 (--semantic-threshold" in result.output


@pytest.mark.slow
def test_inspect_dropped_json_and_limit(packed):
    result = CliRunner().invoke(app, ["inspect", str(packed), "--dropped", "--json", "--limit", "1"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)["dropped"]
    assert listing["total"] == 2 and listing["not_shown"] == 1 and listing["embedder"] == "all-MiniLM-L6-v2"
    (pair,) = listing["pairs"]  # semantic first
    assert pair["reason"] == "semantic" and 0.9 < pair["cosine"] < 1.0
    assert (pair["dropped"]["id"], pair["kept"]["id"]) == ("b", "a")
    assert pair["kept"]["text"] == RECORDS[0]["text"]
    plain = CliRunner().invoke(app, ["inspect", str(packed), "--json"])
    assert "dropped" not in json.loads(plain.output)  # only with --dropped
    assert json.loads(plain.output)["semantic_threshold"]["value"] == 0.9
    shown = CliRunner().invoke(app, ["inspect", str(packed), "--dropped", "--limit", "1"], terminal_width=200)
    assert "1 more not shown" in shown.output


def test_inspect_dropped_without_the_store_is_one_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", RECORDS)
    out = pack(path, tmp_path / "out", config=PackConfig(strategy="eos", seq_len=32, dedup=True))
    listing = CliRunner().invoke(app, ["inspect", str(out), "--dropped", "--json"])
    pair = json.loads(listing.output)["dropped"]["pairs"][0]
    assert pair["reason"] == "exact" and pair["cosine"] is None and (pair["dropped"]["id"], pair["kept"]["id"]) == ("d", "c")
    table = CliRunner().invoke(app, ["inspect", str(out), "--dropped"], terminal_width=200)
    assert any("exact" in line and " - " in line for line in table.output.splitlines())
    import shutil

    shutil.rmtree(out / "work")
    result = CliRunner().invoke(app, ["inspect", str(out), "--dropped"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "document store" in result.output and "is gone" in result.output


def test_inspect_dropped_gives_near_pairs_their_exact_jaccard(tmp_path):
    """A near copy (one word of 30 changed) is listed with the Jaccard MinHash estimated, computed exactly."""
    words = [f"word{i}" for i in range(30)]
    edited = words[:15] + ["changed"] + words[16:]
    records = [{"id": "orig", "text": " ".join(words)}, {"id": "copy", "text": " ".join(edited)},
               {"id": "other", "text": "Something else entirely, about bread and flour."}]
    out = pack(write_jsonl(tmp_path / "c.jsonl", records), tmp_path / "out",
               config=PackConfig(strategy="eos", seq_len=32, dedup=True), dedup_config=DedupConfig(minhash_threshold=0.7))
    (pair,) = json.loads(CliRunner().invoke(app, ["inspect", str(out), "--dropped", "--json"]).output)["dropped"]["pairs"]
    assert pair["reason"] == "near" and (pair["dropped"]["id"], pair["kept"]["id"]) == ("copy", "orig")
    # 28 word 3-grams each; the changed word is in 3 of them: 25 shared of 31 distinct.
    assert pair["jaccard"] == round(25 / 31, 4) and pair["cosine"] is None


def test_threshold_label_keeps_a_calibrated_cut_below_one_apart_from_one():
    from packprep.inspect.dropped import threshold_label

    label = threshold_label({"value": 0.9999989796883644, "source": "calibrated to MiniLM's 0.97", "embedder": "static"})
    assert label == "0.999999 (calibrated to MiniLM's 0.97, static)"
    assert threshold_label({"value": 0.97, "source": "default", "embedder": "m", "scope": "partitions"}) == "0.97 (default, m, within partitions)"
