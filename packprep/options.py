"""Shared Typer options and the choice enums, so every command spells them the same."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from packprep.formats import CONVERSIONS, FORMATS
from packprep.stages.strategies import STRATEGIES


# The choices come from the registries, so a new strategy or format needs no edit here.
Strategy = Enum("Strategy", {name: name for name in STRATEGIES}, type=str)


class Packing(str, Enum):
    split = "split"
    bestfit = "bestfit"


Format = Enum("Format", {name: name for name in FORMATS}, type=str)
ConvertFormat = Enum("ConvertFormat", {name: name for name in CONVERSIONS}, type=str)


class EngineName(str, Enum):
    local = "local"
    ray = "ray"


class Embedder(str, Enum):
    minilm = "minilm"
    static = "static"


class OnError(str, Enum):
    raise_ = "raise"
    skip = "skip"


CorpusArg = Annotated[Path, typer.Argument(help="A file or folder of .jsonl(.gz/.zst), .json, .parquet, .txt/.md, or a Hugging Face save_to_disk folder.", show_default=False)]
WorkArg = Annotated[Path, typer.Argument(help="Folder for the document store.", show_default=False)]
OutArg = Annotated[Path, typer.Argument(help="Output folder for the shards.", show_default=False)]

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages (warnings still go to stderr).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the contents of a non-empty output folder.")]
TokenizerOpt = Annotated[str, typer.Option("--tokenizer", help="'cl100k' (offline), a tokenizer.json, or a .tiktoken file.")]
TextField = Annotated[str, typer.Option("--text-field", help="Record field holding the text.")]
IdField = Annotated[str, typer.Option("--id-field", help="Record field holding the id (default when absent: path:line).")]
EosId = Annotated[Optional[int], typer.Option("--eos-id", help="Override the tokenizer's EOS id.", show_default=False)]
BosId = Annotated[Optional[int], typer.Option("--bos-id", help="Override the tokenizer's BOS id.", show_default=False)]
OnErrorOpt = Annotated[OnError, typer.Option("--on-error", help="'raise': stop at the first bad record; 'skip': skip and count them.")]
StrategyOpt = Annotated[Strategy, typer.Option("--strategy", help="Document order and separators.")]
PackingOpt = Annotated[Packing, typer.Option("--packing", help="'split': cut the stream at the window; 'bestfit': whole documents, padded (best-fit decreasing; along the order for cluster/icp).")]
SeqLen = Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for every random choice.")]
ShardSize = Annotated[Optional[int], typer.Option("--shard-size", help="Rows per shard (default: about 256 MB per shard).", show_default=False)]
DedupOpt = Annotated[Optional[bool], typer.Option("--dedup/--no-dedup", help="Drop exact and near duplicates (default: on for cluster/icp, off for random/eos).", show_default=False)]
MinhashThreshold = Annotated[float, typer.Option("--minhash-threshold", help="Near-duplicate Jaccard threshold (MinHash LSH over word 3-grams of normalised text).")]
SemanticThreshold = Annotated[Optional[float], typer.Option("--semantic-threshold", help="Drop documents whose cosine to an earlier kept one is above this (icp default: 0.97 for MiniLM, calibrated for --embedder static; off otherwise; 0: off).", show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Embedding model for --embedder minilm: all-MiniLM-L6-v2 (bundled, the default) or a local sentence-transformers folder.", show_default=False)]
EmbedTokens = Annotated[Optional[int], typer.Option("--embed-tokens", help="Embed each document's first N tokens (default: 256; packing a document store: what its embeddings were made with).", show_default=False)]
Clusters = Annotated[Optional[int], typer.Option("--clusters", help="k-means clusters for --strategy cluster (default: about sqrt(documents)).", show_default=False)]
Knn = Annotated[int, typer.Option("--knn", help="Neighbours per document in the icp graph.")]
PartitionDocs = Annotated[int, typer.Option("--partition-docs", help="icp/cluster: above this many documents, order them in partitions of at most this many (coarse k-means; semantic dedup then runs inside each partition), chained by topic; every strategy: pack the order in parts of this many documents. Each partition and part is one task with --engine ray. 0: never.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="npy shards (always written; what inspect/verify read), plus an arrow (Hugging Face datasets) or megatron (.bin/.idx) copy in OUT/arrow or OUT/megatron.")]
Labels = Annotated[Optional[bool], typer.Option("--labels/--no-labels", help="The arrow copy's labels column: -100 at padding and document starts (default: written; --no-labels: about a third smaller).", show_default=False)]
Workers = Annotated[Optional[int], typer.Option("--workers", help="Parallel workers for tokenizing (processes with bpe-openai, threads otherwise), embedding and the kNN index (default: all cores). Output does not depend on it.", show_default=False)]
EngineOpt = Annotated[EngineName, typer.Option("--engine", help="Where tokenize, dedup and embed run: here, or on Ray (pip install 'packprep[ray]'). Same output either way.")]
RayAddress = Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to join ('auto': the running one); default: start a local Ray.", show_default=False)]
EmbedderOpt = Annotated[Optional[Embedder], typer.Option("--embedder", help="minilm: the sentence-transformers model (--model); static: token vectors distilled from the bundled MiniLM and fitted to a sample of the corpus, ~150x faster at 1M documents (~40x at 100k), a little less accurate. Default: minilm; packing a document store: the embedder its embeddings were made with.", show_default=False)]
