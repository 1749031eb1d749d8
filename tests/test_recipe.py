"""recipe.load_recipe: the keys, the checks and the one-line errors that name file, key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from packprep.errors import PackprepError
from packprep.recipe import key_line, load_recipe

GOOD = """\
[pack]
strategy = "eos"
seq_len = 128
seed = 1

[mix]
tokens = 10_000

[[source]]
name = "a"
path = "a.jsonl"
weight = 0.6
[[source]]
name = "b"
path = "b/"
weight = 0.4
id_prefix = "x/"

[split]
val_fraction = 0.1

[decontaminate]
paths = ["evals/"]
ngram = 8
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "b").mkdir()
    (tmp_path / "evals").mkdir()
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "recipe.toml"
    path.write_text(text)
    return path


def test_a_good_recipe_parses(folder):
    recipe = load_recipe(write(folder, GOOD))
    assert recipe.pack == {"strategy": "eos", "seq_len": 128, "seed": 1}
    assert recipe.tokens == 10_000 and recipe.val_fraction == 0.1 and recipe.ngram == 8 and recipe.decontaminate_val
    assert [(s.name, s.weight, s.id_prefix) for s in recipe.sources] == [("a", 0.6, ()), ("b", 0.4, ("x/",))]
    assert recipe.sources[0].path == folder.resolve() / "a.jsonl"  # relative to the recipe file
    assert recipe.benchmarks == (folder.resolve() / "evals/",)
    assert recipe.shares == pytest.approx({"a": 0.6, "b": 0.4})
    assert recipe.text == GOOD and len(recipe.sha256) == 64


def test_key_line_finds_keys_in_the_right_table():
    assert key_line(GOOD, table="source", key="weight", index=1) == 16
    assert key_line(GOOD, table="source", key=None, index=1) == 13
    assert key_line(GOOD, table="pack", key="seq_len") == 3
    assert key_line(GOOD, table="mix", key="missing") is None


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ("weight = 0.4", "wieght = 0.4", r"recipe.toml:16: \[\[source\]\] unknown key 'wieght' \(did you mean 'weight'\?\)"),
        ("weight = 0.4", "weight = 0", r"recipe.toml:16: \[\[source\]\] weight of source 'b' must be more than 0, got 0"),
        ("weight = 0.4", "weight = -1.5", r"recipe.toml:16: .*must be more than 0, got -1.5"),
        ('name = "b"', 'name = "a"', r"recipe.toml:14: \[\[source\]\] duplicate source name 'a'"),
        ('path = "b/"', 'path = "nope/"', r"recipe.toml:15: \[\[source\]\] path of source 'b' does not exist: 'nope/'"),
        ("val_fraction = 0.1", "val_fraction = 1.0", r"recipe.toml:20: \[split\] val_fraction must be in \[0, 1\), got 1.0"),
        ("val_fraction = 0.1", "val_fraction = -0.1", r"recipe.toml:20: \[split\] val_fraction must be in \[0, 1\)"),
        ("tokens = 10_000", "tokens = 0", r"recipe.toml:7: \[mix\] tokens must be more than 0, got 0"),
        ("tokens = 10_000", "token = 5", r"recipe.toml:7: \[mix\] unknown key 'token' \(did you mean 'tokens'\?\)"),
        ('strategy = "eos"', 'stratgy = "eos"', r"recipe.toml:2: \[pack\] unknown key 'stratgy' \(did you mean 'strategy'\?\)"),
        ('strategy = "eos"', 'strategy = "icpp"', r"recipe.toml:2: \[pack\] strategy must be one of random, eos, cluster, icp, got 'icpp'"),
        ("seq_len = 128", 'seq_len = "128"', r"recipe.toml:3: \[pack\] seq_len must be an integer, got '128'"),
        ("seed = 1", "seed = true", r"recipe.toml:4: \[pack\] seed must be an integer, got True"),
        ('paths = ["evals/"]', 'paths = ["gone/"]', r"recipe.toml:23: \[decontaminate\] paths: 'gone/' does not exist"),
        ("ngram = 8", "ngram = 0", r"recipe.toml:24: \[decontaminate\] ngram must be at least 1, got 0"),
        ("ngram = 8", "ngram = 8\nmax_ngram_documents = 0", r"recipe.toml:25: \[decontaminate\] max_ngram_documents must be at least 1, got 0"),
        ("ngram = 8", 'ngram = 8\nval = "no"', r"recipe.toml:25: \[decontaminate\] val must be true or false, got 'no'"),
        ("[split]", "[splitt]", r"recipe.toml:19: unknown key 'splitt' \(did you mean 'split'\?\)"),
        ("seq_len = 128", "seq_len = 128\nseq_len = 64", r"recipe.toml: not valid TOML: .*line 4"),
    ],
)
def test_bad_input_is_one_line_naming_file_key_and_line(folder, old, new, expected):
    assert old in GOOD
    with pytest.raises(PackprepError, match=expected) as err:
        load_recipe(write(folder, GOOD.replace(old, new, 1)))
    assert "\n" not in str(err.value)


def test_missing_keys_and_files(folder):
    with pytest.raises(PackprepError, match=r"recipe.toml: recipe file not found"):
        load_recipe(folder / "recipe.toml")
    with pytest.raises(PackprepError, match=r"recipe.toml:1: \[\[source\]\] number 1 has no weight"):
        load_recipe(write(folder, '[[source]]\nname = "a"\npath = "a.jsonl"\n'))
    with pytest.raises(PackprepError, match=r"recipe.toml: no \[\[source\]\]"):
        load_recipe(write(folder, "[pack]\nseed = 1\n"))
    with pytest.raises(PackprepError, match=r"val_fraction or val_documents, not both"):
        load_recipe(write(folder, GOOD.replace("val_fraction = 0.1", "val_fraction = 0.1\nval_documents = 3")))
