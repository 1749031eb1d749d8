"""The command line: each command turns options into a config and calls the pipeline."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional, TypeVar

import typer
from typer import _click as click  # Typer vendors its own click: its exception classes are these
from typer.core import TyperGroup

from packprep import options as o
from packprep.io import folder_lock
from packprep.errors import EXIT_INTERRUPTED, PackprepError

class _OneLineErrors(TyperGroup):
    """Usage errors (a bad choice, a non-number) as one ``error:`` line like every other
    error, instead of click's multi-line box; scripts grep stderr for it."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as err:
            err.show()
            sys.exit(err.exit_code)
        except click.ClickException as err:
            context = f"{err.ctx.command_path}: " if getattr(err, "ctx", None) is not None else ""
            print(f"error: {context}{err.format_message()} (see --help)", file=sys.stderr)
            sys.exit(err.exit_code)
        except typer.Abort:
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Offline data preparation for LLM pretraining: tokenize, dedup, embed, pack, shard, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich's option table cuts long option names at 80 columns, and its
    # markup would eat the [ray] of "pip install 'packprep[ray]'".
    rich_markup_mode=None,
)
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(command: F) -> F:
    """User errors become one line on stderr and exit 2; Ctrl-C exits 130, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PackprepError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted; finished files were kept and a rerun of the same command resumes", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as err:  # a full disk, a permission denied: what the system said, about which file
            where = f"{err.filename}: " if err.filename else ""
            print(f"error: {where}{err.strerror or err}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _use_workers(workers: Optional[int]) -> Optional[int]:
    """Size every thread pool a stage may start; call before those libraries are imported."""
    from packprep.config import check_workers

    check_workers(workers)
    if workers is None:
        return None
    import os

    for name in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(workers)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(workers)
    return workers


def _engine(engine: o.EngineName, ray_address: Optional[str]):
    from packprep.engines import Engine

    return Engine(engine.value, ray_address)


def _embed_config(embedder: Optional[o.Embedder], model: Optional[str], embed_tokens: Optional[int]):
    """The embed config the options ask for; with neither --embedder nor --model, a
    ``HeldEmbedder`` (pack uses a document store's own embeddings, else MiniLM)."""
    from packprep.config import EmbedConfig
    from packprep.pipeline.semantic import HeldEmbedder
    from packprep.stages.embed import DEFAULT_MODEL

    tokens = {} if embed_tokens is None else {"embed_tokens": embed_tokens}
    if embedder is o.Embedder.static:
        if model not in (None, DEFAULT_MODEL):
            raise PackprepError("--embedder static is distilled from the bundled all-MiniLM-L6-v2; it takes no --model")
        return EmbedConfig(model="static", **tokens)
    if embedder is None and model is None:
        return HeldEmbedder(**tokens)
    return EmbedConfig(model=model or DEFAULT_MODEL, **tokens)


def _rows_of(out: Path) -> Optional[int]:
    """The row count an output's manifest states, for a progress bar; None when it has none
    (the command itself then says what is wrong with the manifest)."""
    from packprep.io import load_json
    from packprep.formats import npy

    try:
        return int(load_json(out / npy.MANIFEST_NAME)["counts"]["num_sequences"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reporter(quiet: bool):
    from packprep.progress import RichReporter, SilentReporter

    return SilentReporter() if quiet else RichReporter()


def _tokenize_config(tokenizer: str, text_field: str, id_field: str, eos_id: Optional[int], bos_id: Optional[int], on_error: o.OnError):
    from packprep.config import TokenizeConfig

    return TokenizeConfig(
        tokenizer=tokenizer, text_field=text_field, id_field=id_field, eos_id=eos_id, bos_id=bos_id, on_error=on_error.value
    )


@app.command()
@handle_errors
def tokenize(
    corpus: o.CorpusArg,
    work: o.WorkArg,
    tokenizer: o.TokenizerOpt = "cl100k",
    text_field: o.TextField = "text",
    id_field: o.IdField = "id",
    eos_id: o.EosId = None,
    bos_id: o.BosId = None,
    on_error: o.OnErrorOpt = o.OnError.raise_,
    workers: o.Workers = None,
    engine: o.EngineOpt = o.EngineName.local,
    ray_address: o.RayAddress = None,
    overwrite: o.Overwrite = False,
    quiet: o.Quiet = False,
) -> None:
    """Tokenize a corpus into a document store (flat tokens + offsets + ids)."""
    workers = _use_workers(workers)
    from packprep.pipeline import tokenize as run

    config = _tokenize_config(tokenizer, text_field, id_field, eos_id, bos_id, on_error)
    store = run(
        corpus, work, config=config, overwrite=overwrite, workers=workers, engine=_engine(engine, ray_address),
        reporter=_reporter(quiet),
    )
    if not quiet:
        print(f"{store.num_documents:,} documents, {store.num_tokens:,} tokens -> {work}", file=sys.stderr)


@app.command()
@handle_errors
def dedup(
    work: o.WorkArg,
    minhash_threshold: o.MinhashThreshold = 0.8,
    near: Annotated[bool, typer.Option("--near/--no-near", help="MinHash near-duplicate detection on top of exact.")] = True,
    engine: o.EngineOpt = o.EngineName.local,
    ray_address: o.RayAddress = None,
    quiet: o.Quiet = False,
) -> None:
    """Find exact and near duplicates in a document store (a keep-mask beside it; nothing is deleted)."""
    from packprep.config import DedupConfig
    from packprep.pipeline.semantic import dedup as run
    from packprep.store import DocStore

    config = DedupConfig(minhash_threshold=minhash_threshold, near=near)
    store = DocStore.open(work)
    with folder_lock(work):
        result = run(store, config=config, engine=_engine(engine, ray_address), reporter=_reporter(quiet))
    if not quiet:
        print(f"kept {int(result.keep.sum()):,} of {len(result.keep):,} documents: {result.manifest['counts']}", file=sys.stderr)


@app.command()
@handle_errors
def embed(
    work: o.WorkArg,
    model: o.ModelOpt = None,
    embedder: o.EmbedderOpt = o.Embedder.minilm,
    embed_tokens: o.EmbedTokens = None,
    workers: o.Workers = None,
    engine: o.EngineOpt = o.EngineName.local,
    ray_address: o.RayAddress = None,
    quiet: o.Quiet = False,
) -> None:
    """Embed every document of a store (first --embed-tokens tokens) into WORK/embeddings.npy
    (MiniLM; another embedder's go beside it, e.g. WORK/embeddings.static.npy). A killed run resumes."""
    _use_workers(workers)
    from packprep.store.embeddings import EmbedFiles
    from packprep.pipeline.semantic import embed as run
    from packprep.store import DocStore

    config = _embed_config(embedder, model, embed_tokens)  # --embedder defaults to minilm here: an EmbedConfig
    store = DocStore.open(work)
    with folder_lock(work):
        embeddings = run(store, config=config, engine=_engine(engine, ray_address), reporter=_reporter(quiet))
    if not quiet:
        where = EmbedFiles.of(work, config.model).vectors
        print(f"embeddings {embeddings.shape[0]:,} x {embeddings.shape[1]} -> {where}", file=sys.stderr)


@app.command()
@handle_errors
def pack(
    ctx: typer.Context,
    source: Annotated[Optional[Path], typer.Argument(help="A raw corpus (tokenized first, cached in OUT/work) or a document store; with --recipe, OUT alone.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Argument(help="Output folder for the shards.", show_default=False)] = None,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="A TOML recipe (sources, weights, split, decontamination; docs/recipes.md): `packprep pack --recipe FILE OUT`. Options given here override its [pack].", show_default=False)] = None,
    strategy: o.StrategyOpt = o.Strategy.eos,
    seq_len: o.SeqLen = 2048,
    packing: o.PackingOpt = o.Packing.split,
    seed: o.Seed = 0,
    shard_size: o.ShardSize = None,
    tokenizer: o.TokenizerOpt = "cl100k",
    text_field: o.TextField = "text",
    id_field: o.IdField = "id",
    eos_id: o.EosId = None,
    bos_id: o.BosId = None,
    on_error: o.OnErrorOpt = o.OnError.raise_,
    dedup: o.DedupOpt = None,
    minhash_threshold: o.MinhashThreshold = 0.8,
    semantic_threshold: o.SemanticThreshold = None,
    model: o.ModelOpt = None,
    embedder: o.EmbedderOpt = None,
    embed_tokens: o.EmbedTokens = None,
    clusters: o.Clusters = None,
    knn: o.Knn = 10,
    partition_docs: o.PartitionDocs = 1_000_000,
    format: o.FormatOpt = o.Format.npy,
    labels: o.Labels = None,
    workers: o.Workers = None,
    engine: o.EngineOpt = o.EngineName.local,
    ray_address: o.RayAddress = None,
    overwrite: o.Overwrite = False,
    quiet: o.Quiet = False,
) -> None:
    """Pack documents into fixed-length sequences and write npy shards (and an arrow or megatron copy)."""
    loaded = None
    if recipe is not None:
        from packprep.recipe import load_recipe

        if source is None or out is not None:
            raise PackprepError("with --recipe give OUT alone: packprep pack --recipe FILE OUT")
        loaded, out = load_recipe(recipe), source
        # The recipe's [pack] fills every option not given on the command line.
        given = {name for name in ctx.params if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
        values = {**ctx.params, **{k: _recipe_value(k, v) for k, v in loaded.pack.items() if k not in given}}
        return pack_recipe_command(loaded, out, values)
    if source is None or out is None:
        raise PackprepError("give a corpus and an output folder (packprep pack CORPUS OUT), or --recipe FILE OUT")
    workers = _use_workers(workers)
    from packprep.config import DedupConfig, PackConfig
    from packprep.pipeline import pack as run

    config = PackConfig(
        strategy=strategy.value, seq_len=seq_len, packing=packing.value, seed=seed, rows_per_shard=shard_size,
        dedup=dedup, semantic_threshold=semantic_threshold, clusters=clusters, knn=knn,
        partition_docs=partition_docs,
    )
    run(
        source, out, config=config,
        tokenize_config=_tokenize_config(tokenizer, text_field, id_field, eos_id, bos_id, on_error),
        dedup_config=DedupConfig(minhash_threshold=minhash_threshold),
        embed_config=_embed_config(embedder, model, embed_tokens),
        format=format.value, labels=labels, overwrite=overwrite, workers=workers,
        engine=_engine(engine, ray_address), reporter=_reporter(quiet),
    )
    if not quiet:
        print(f"wrote {out}; see `packprep inspect {out}`", file=sys.stderr)


_RECIPE_CHOICES = {"strategy": o.Strategy, "packing": o.Packing, "on_error": o.OnError, "format": o.Format,
                   "engine": o.EngineName, "embedder": o.Embedder}


def _recipe_value(name: str, value: Any) -> Any:
    """A recipe's [pack] value as the CLI option would hold it (recipe.load_recipe checked the choices)."""
    return _RECIPE_CHOICES[name](value) if name in _RECIPE_CHOICES else value


def pack_recipe_command(recipe: Any, out: Path, v: dict[str, Any]) -> None:
    """`packprep pack --recipe`: the options (command line over the recipe's [pack]) into configs."""
    workers = _use_workers(v["workers"])
    from packprep.config import DedupConfig, PackConfig
    from packprep.pipeline.recipe import pack_recipe

    config = PackConfig(
        strategy=v["strategy"].value, seq_len=v["seq_len"], packing=v["packing"].value, seed=v["seed"],
        rows_per_shard=v["shard_size"], dedup=v["dedup"], semantic_threshold=v["semantic_threshold"],
        clusters=v["clusters"], knn=v["knn"],
    )
    pack_recipe(
        recipe, out, config=config,
        tokenize_config=_tokenize_config(v["tokenizer"], v["text_field"], v["id_field"], v["eos_id"], v["bos_id"], v["on_error"]),
        dedup_config=DedupConfig(minhash_threshold=v["minhash_threshold"]),
        embed_config=_embed_config(v["embedder"], v["model"], v["embed_tokens"]),
        format=v["format"].value, labels=v["labels"], overwrite=v["overwrite"], workers=workers,
        engine=_engine(v["engine"], v["ray_address"]), reporter=_reporter(v["quiet"]),
    )
    if not v["quiet"]:
        where = f"{out / 'train'} and {out / 'val'}" if recipe.has_split else str(out)
        print(f"wrote {where}; see `packprep inspect {out / 'train' if recipe.has_split else out}`", file=sys.stderr)


@app.command()
@handle_errors
def convert(
    out: Annotated[Path, typer.Argument(help="A finished packprep output folder (npy shards).", show_default=False)],
    to: Annotated[o.ConvertFormat, typer.Option("--to", help="arrow: Hugging Face datasets folder; megatron: indexed .bin/.idx.", show_default=False)],
    dest: Annotated[Optional[Path], typer.Option("--dest", help="Where to write (default: OUT/<format>).", show_default=False)] = None,
    labels: o.Labels = None,
    quiet: o.Quiet = False,
) -> None:
    """Convert an existing output to another trainer format without repacking."""
    from packprep.formats.convert import convert as run

    from packprep.formats import labels_ignored

    reporter = _reporter(quiet)
    if warning := labels_ignored(to.value, labels, "--to"):
        reporter.warn(warning)
    with reporter.track(f"convert to {to.value}", total=_rows_of(out), unit="rows") as advance:
        written = run(out, to=to.value, dest=dest, labels=labels is not False, progress=advance)
    if not quiet:
        print(f"wrote {written}", file=sys.stderr)


@app.command()
@handle_errors
def verify(
    out: Annotated[Path, typer.Argument(help="A packprep output folder.", show_default=False)],
    against: Annotated[Optional[Path], typer.Option("--against", help="The document store (e.g. OUT/work): check every kept document's tokens appear exactly once.", show_default=False)] = None,
    quiet: o.Quiet = False,
) -> None:
    """Check checksums, shapes, dtypes, boundaries, token ids, coverage and the converted copies; exit 1 on any problem."""
    from packprep.formats import CONVERSIONS
    from packprep.verify import verify_output

    total = _rows_of(out)
    with _reporter(quiet).track("verify", total=total, unit="rows") as advance:
        problems = verify_output(out, against=against, progress=advance)
    for problem in problems[:50]:
        print(f"error: {out}/{problem}", file=sys.stderr)
    if len(problems) > 50:
        print(f"error: ... and {len(problems) - 50} more problems", file=sys.stderr)
    if problems:
        raise typer.Exit(1)
    if not quiet:
        checked = "tokens, boundaries and coverage" + (f", against the store {against}" if against else "")
        copies = [name for name in CONVERSIONS if (out / name).is_dir()]
        checked += "".join(f", {out / name} against the shards" for name in copies)
        print(f"ok: {out} ({total:,} rows; checksums, {checked})", file=sys.stderr)


@app.command()
@handle_errors
def inspect(
    out: Annotated[Path, typer.Argument(help="A packprep output folder.", show_default=False)],
    json_: Annotated[bool, typer.Option("--json", help="Print the statistics as one JSON object.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw histograms into this PNG file.", show_default=False)] = None,
    row: Annotated[Optional[int], typer.Option("--row", help="Show row i decoded, documents coloured.", show_default=False)] = None,
    dropped: Annotated[bool, typer.Option("--dropped", help="List dropped documents beside the kept twin, with reason, cosine and Jaccard (needs the document store).")] = False,
    limit: Annotated[int, typer.Option("--limit", help="With --dropped: list at most this many (0: all).")] = 20,
) -> None:
    """Statistics of a packed output: fill, padding, documents, segments, histograms."""
    from packprep import inspect as report
    from packprep.inspect.dropped import dropped_pairs, print_dropped

    dataset = report.open_output(out)
    if row is not None:
        report.print_row(dataset, row)
        return
    if limit < 0:
        raise PackprepError(f"--limit must be 0 (all) or more, got {limit}")
    listing = dropped_pairs(dataset, limit=limit) if dropped else None
    if listing is not None and not json_:
        print_dropped(listing)
        return
    stats = report.compute_stats(dataset)
    if listing is not None:
        stats["dropped"] = listing
    if json_:
        print(report.stats_json(stats))
    else:
        report.print_stats(stats)
    if plot is not None:
        report.plot_histograms(stats, plot)
        if not json_:
            print(f"plot written to {plot}", file=sys.stderr)


def main() -> None:
    """The ``packprep`` command. It ends the process (:func:`_exit`): a program that runs the CLI
    inside its own process and carries on after it calls ``app()`` instead."""
    try:
        app()
    except SystemExit as done:
        _exit(done.code)
    _exit(0)


# Python's own exit code when the standard output cannot be flushed at exit.
EXIT_OUTPUT_LOST = 120


def _exit(code: Any) -> NoReturn:
    """Exit with ``code`` once the command is done, skipping the interpreter's teardown where that is safe.

    Freeing every module's objects (numpy, pydantic, Typer's) took ~40 ms of one core after
    ``pack`` had written its manifest (strace: from the last write to exit_group). The exit
    handlers still run (Ray's shutdown, weakref finalizers) and the standard streams are
    flushed; a thread still working or a non-numeric code take the ordinary exit. Output that
    cannot be written (a full disk) is an error, as in the ordinary exit: a one-line message and
    EXIT_OUTPUT_LOST; a reader that stopped early (``| head``) is not.
    """
    import atexit
    import threading

    working = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if working or not (code is None or isinstance(code, int)):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the ordinary exit would run; no public name for it
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader has what it wanted
        pass
    except ValueError:  # stdout closed by the command itself
        pass
    except OSError as exc:
        print(f"error: the output could not be written: {exc.strerror or exc}", file=sys.stderr)
        code = code or EXIT_OUTPUT_LOST
    try:
        sys.stderr.flush()
    except (OSError, ValueError):  # nowhere left to say anything
        pass
    os._exit(code or 0)


if __name__ == "__main__":
    main()
