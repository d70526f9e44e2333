"""Tokenizer benchmark: youtokentome BPE (the project's, through tokenization/bpe.py) against sentencepiece BPE and
Hugging Face ``tokenizers`` BPE, on the same corpus at the same vocabulary sizes.

Each data set is read by the project's own reader (``lifecycle.corpus.load_corpus`` on configs/<name>-bpe.yaml, whose
``tokenizer.bpe`` section also gives coverage and lower-casing); every library learns from the training split's texts.
Per (data set, library, vocabulary size) it measures:

- training seconds: the median of ``--repeats`` runs, each into a fresh temporary directory, from the texts to the
  model file on disk (youtokentome through ``BPETokenizer.train``, which also writes its training text and loads the
  model it wrote);
- encoding throughput in texts/s over the train + test texts, best of ``--repeats``: one call per text, the library's
  batch API on one thread, and the batch API on ``--threads`` threads (youtokentome ``BPE(model, n_threads=N).encode``,
  sentencepiece ``encode(list, num_threads=N)``, tokenizers ``encode_batch_fast`` on its Rayon pool);
- the vocabulary size actually produced (a small corpus can run out of pairs to merge before the size asked),
  mean tokens per test text, the unk rate on test (share of tokens that are the unk id) and the model file's size.

The text is normalised as the project's BPE does it (tokenization/bpe.py ``_prepare``): Python's ``str.lower()``
when ``tokenizer.bpe.lowercase`` is true (it is in every config) and nothing else; line breaks become spaces for
training. So the other two get no normalisation of their own: sentencepiece ``normalization_rule_name=identity``
(its default is NFKC) and no ``tokenizers`` normalizer. Lower-casing happens in Python, inside every timed call, for
all three. Every character is kept (``coverage: 1.0``; sentencepiece ``character_coverage=1.0``, tokenizers without
``limit_alphabet``) and all three count the same four specials, at the same ids, in their vocabulary.

    .venv/bin/python benchmarks/tokenizers.py --readme         # MR, TREC, StackOverflow x 4k/8k/16k (~80 s here)
    .venv/bin/python benchmarks/tokenizers.py --quick          # smoke run: TREC, 4000, one repetition
    .venv/bin/python benchmarks/tokenizers.py --datasets mr --sizes 2000,4000 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, Python puts this folder first on sys.path, where this file's own name would shadow the Hugging
# Face `tokenizers` package: move the folder to the end (readme.py is still found there) and the project to the front.
sys.path[:] = [str(ROOT), *(entry for entry in sys.path if Path(entry or ".").resolve() != HERE), str(HERE)]

from readme import cpu_model, write_block  # noqa: E402  (benchmarks/readme.py, beside this script)

from lifecycle.config import BPEConfig, load_config  # noqa: E402
from lifecycle.corpus import load_corpus  # noqa: E402
from tokenization.base import BOS, EOS, PAD, UNK  # noqa: E402
from tokenization.bpe import BPETokenizer  # noqa: E402

CONFIGS: dict[str, str] = {"mr": "mr-bpe.yaml", "trec": "trec-bpe.yaml", "stackoverflow": "stackoverflow-bpe.yaml"}
TITLES: dict[str, str] = {"mr": "MR", "trec": "TREC", "stackoverflow": "StackOverflow"}
DEFAULT_SIZES: tuple[int, ...] = (4000, 8000, 16000)
QUICK_DATASET, QUICK_SIZE = "trec", 4000  # the smallest data set
# The project's specials (tokenization.base), so every library counts the same four ids 0-3 in its vocabulary.
SPECIALS: dict[int, str] = {PAD: "<pad>", UNK: "<unk>", BOS: "<s>", EOS: "</s>"}
HF_PARALLELISM = "TOKENIZERS_PARALLELISM"


@dataclass(frozen=True)
class Loaded:
    """A trained tokenizer as the benchmark drives it; every callable lower-cases its input as the project does."""

    vocab_size: int
    unk_id: int
    encode_one: Callable[[str], list[int]]
    encode_batch: Callable[[Sequence[str], int], list[list[int]]]  # texts, threads
    decode: Callable[[list[list[int]]], list[str]]


@dataclass(frozen=True)
class Library:
    """One contender: how it trains (texts -> model file) and loads, and what its batch API is."""

    name: str  # the distribution name, for its version
    train: Callable[[Sequence[str], BPEConfig, Path], Path]
    load: Callable[[Path, BPEConfig], Loaded]
    batch_api: str


@dataclass(frozen=True)
class Row:
    """The figures of one (data set, library, vocabulary size); ``error`` is set when training failed."""

    dataset: str
    library: str
    requested: int
    produced: int = 0
    train_seconds: float = 0.0
    per_call: float = 0.0  # texts/s, one call per text
    batch_one: float = 0.0  # texts/s, batch API on one thread
    batch_many: float | None = None  # texts/s, batch API on --threads threads (None when that is 1)
    tokens_per_text: float = 0.0
    unk_rate: float = 0.0
    model_bytes: int = 0
    error: str = ""


def normalize(text: str, cfg: BPEConfig) -> str:
    """The project's BPE normalisation (tokenization/bpe.py): ``str.lower()`` when configured, nothing else."""
    return text.lower() if cfg.lowercase else text


def training_lines(texts: Sequence[str], cfg: BPEConfig) -> list[str]:
    """Texts as BPETokenizer.train feeds them to youtokentome: normalised, one per line."""
    return [normalize(text, cfg).replace("\n", " ").replace("\r", " ") for text in texts]


# --- youtokentome (the project's tokenizer) --------------------------------------------------------------------


def train_youtokentome(texts: Sequence[str], cfg: BPEConfig, folder: Path) -> Path:
    """The project's own training path; the model file is ``bpe.model`` in ``folder``."""
    BPETokenizer.train(texts, cfg, workdir=folder)
    return folder / "bpe.model"


def load_youtokentome(path: Path, cfg: BPEConfig) -> Loaded:
    """youtokentome fixes its encoding threads when a model is loaded, so one loaded model per thread count."""
    import youtokentome as yttm

    by_threads = {threads: yttm.BPE(model=str(path), n_threads=threads) for threads in {1, cfg.threads}}
    one = by_threads[1]
    ids = yttm.OutputType.ID

    def encode_batch(texts: Sequence[str], threads: int) -> list[list[int]]:
        return by_threads[threads].encode([normalize(text, cfg) for text in texts], output_type=ids)

    return Loaded(
        vocab_size=one.vocab_size(),
        unk_id=UNK,
        encode_one=lambda text: one.encode([normalize(text, cfg)], output_type=ids)[0],
        encode_batch=encode_batch,
        decode=lambda rows: one.decode(rows, ignore_ids=[PAD, BOS, EOS]),
    )


# --- sentencepiece ---------------------------------------------------------------------------------------------


def train_sentencepiece(texts: Sequence[str], cfg: BPEConfig, folder: Path) -> Path:
    """sentencepiece BPE with the project's normalisation, coverage and special ids; ``spm.model`` in ``folder``."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines(texts, cfg)),
        model_prefix=str(folder / "spm"),
        model_type="bpe",
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.coverage,
        normalization_rule_name="identity",  # lower-cased in Python already; its default would also apply NFKC
        # A soft limit: on a small corpus report the size it reaches instead of failing ("Vocabulary size too high").
        hard_vocab_limit=False,
        pad_id=PAD,
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        pad_piece=SPECIALS[PAD],
        unk_piece=SPECIALS[UNK],
        bos_piece=SPECIALS[BOS],
        eos_piece=SPECIALS[EOS],
        num_threads=cfg.threads,
        minloglevel=2,  # its trainer logs every step to stderr
    )
    return folder / "spm.model"


def load_sentencepiece(path: Path, cfg: BPEConfig) -> Loaded:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(path))
    return Loaded(
        vocab_size=processor.get_piece_size(),
        unk_id=processor.unk_id(),
        encode_one=lambda text: processor.encode(normalize(text, cfg)),
        encode_batch=lambda texts, threads: processor.encode(
            [normalize(text, cfg) for text in texts], num_threads=threads
        ),
        decode=lambda rows: processor.decode(rows),
    )


# --- Hugging Face tokenizers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def hf_parallelism(enabled: bool) -> Iterator[None]:
    """tokenizers reads TOKENIZERS_PARALLELISM on every call; "false" keeps its batch API on the calling thread."""
    previous = os.environ.get(HF_PARALLELISM)
    os.environ[HF_PARALLELISM] = "true" if enabled else "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(HF_PARALLELISM, None)
        else:
            os.environ[HF_PARALLELISM] = previous


def train_hf_tokenizers(texts: Sequence[str], cfg: BPEConfig, folder: Path) -> Path:
    """A BPE model behind the whitespace/punctuation pre-tokenizer, BpeTrainer; ``tokenizer.json`` in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if cfg.coverage != 1.0:
        raise ValueError(f"tokenizers has no character coverage fraction; run with coverage 1.0, not {cfg.coverage}")
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIALS[UNK]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # splits on \w+|[^\w\s]+
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, special_tokens=[SPECIALS[i] for i in sorted(SPECIALS)], show_progress=False
    )
    lines = training_lines(texts, cfg)
    with hf_parallelism(cfg.threads > 1):
        tokenizer.train_from_iterator(lines, trainer=trainer, length=len(lines))
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def load_hf_tokenizers(path: Path, cfg: BPEConfig) -> Loaded:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))

    def encode_batch(texts: Sequence[str], threads: int) -> list[list[int]]:
        # encode_batch_fast skips the character offsets: ids only, as the other two return.
        with hf_parallelism(threads > 1):
            return [encoding.ids for encoding in tokenizer.encode_batch_fast([normalize(t, cfg) for t in texts])]

    unk_id = tokenizer.token_to_id(SPECIALS[UNK])
    if unk_id != UNK:
        raise RuntimeError(f"tokenizers put {SPECIALS[UNK]} at id {unk_id}, not {UNK} as the other two")
    return Loaded(
        vocab_size=tokenizer.get_vocab_size(),
        unk_id=unk_id,
        encode_one=lambda text: tokenizer.encode(normalize(text, cfg)).ids,
        encode_batch=encode_batch,
        decode=lambda rows: tokenizer.decode_batch(rows),
    )


LIBRARIES: dict[str, Library] = {
    "youtokentome": Library("youtokentome", train_youtokentome, load_youtokentome, "`BPE(n_threads=N).encode(list)`"),
    "sentencepiece": Library(
        "sentencepiece", train_sentencepiece, load_sentencepiece, "`encode(list, num_threads=N)`"
    ),
    "tokenizers": Library("tokenizers", train_hf_tokenizers, load_hf_tokenizers, "`encode_batch_fast(list)`"),
}


# --- measuring -------------------------------------------------------------------------------------------------


def load_texts(dataset: str) -> tuple[list[str], list[str], BPEConfig]:
    """The training and test texts of a data set, read as the project reads them, and its ``tokenizer.bpe``."""
    cfg = load_config(ROOT / "configs" / CONFIGS[dataset])
    corpus = load_corpus(cfg.data, cfg.name)
    return list(corpus.train.texts), list(corpus.test.texts), cfg.tokenizer.bpe


def texts_per_second(run: Callable[[], object], count: int, repeats: int) -> float:
    """``count`` texts over the fastest of ``repeats`` timed calls (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return count / best


def measure(dataset: str, library: Library, train: list[str], test: list[str], cfg: BPEConfig, *,
            repeats: int, threads: int) -> Row:
    """Train ``repeats`` times, each into a fresh temporary directory; measure the last model while its file exists."""
    seconds: list[float] = []
    for run in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-tokenizers-") as folder:
            started = time.perf_counter()
            try:
                path = library.train(train, cfg, Path(folder))
            except Exception as exc:  # reported in the table instead of ending the whole benchmark
                message = (str(exc).strip().splitlines() or [""])[0]
                return Row(dataset, library.name, cfg.vocab_size, error=f"{type(exc).__name__}: {message}")
            seconds.append(time.perf_counter() - started)
            if run == repeats - 1:
                return measure_model(dataset, library, path, train, test, cfg, statistics.median(seconds),
                                     repeats=repeats, threads=threads)
    raise ValueError(f"repeats must be >= 1. Received: {repeats}")


def measure_model(dataset: str, library: Library, path: Path, train: list[str], test: list[str], cfg: BPEConfig,
                  train_seconds: float, *, repeats: int, threads: int) -> Row:
    """Encoding speed on train + test, and vocabulary, tokens, unk rate and file size of one trained model."""
    loaded = library.load(path, cfg)
    everything = train + test
    loaded.encode_batch(everything[:200], threads)  # warm-up: thread pools and lazy set-up are not what we time
    per_call = texts_per_second(lambda: [loaded.encode_one(text) for text in everything], len(everything), repeats)
    batch_one = texts_per_second(lambda: loaded.encode_batch(everything, 1), len(everything), repeats)
    batch_many = (
        texts_per_second(lambda: loaded.encode_batch(everything, threads), len(everything), repeats)
        if threads > 1
        else None
    )
    rows = loaded.encode_batch(test, 1)
    tokens = sum(len(row) for row in rows)
    unknown = sum(row.count(loaded.unk_id) for row in rows)
    return Row(
        dataset=dataset,
        library=library.name,
        requested=cfg.vocab_size,
        produced=loaded.vocab_size,
        train_seconds=train_seconds,
        per_call=per_call,
        batch_one=batch_one,
        batch_many=batch_many,
        tokens_per_text=tokens / max(len(rows), 1),
        unk_rate=unknown / max(tokens, 1),
        model_bytes=path.stat().st_size,
    )


def run_dataset(dataset: str, sizes: Sequence[int], *, repeats: int, threads: int) -> tuple[list[Row], str]:
    """Every library at every size on one data set: the rows and the data set's heading line."""
    train, test, bpe = load_texts(dataset)
    rows: list[Row] = []
    for size in sizes:
        cfg = bpe.model_copy(update={"vocab_size": size, "threads": threads})
        for library in LIBRARIES.values():
            row = measure(dataset, library, train, test, cfg, repeats=repeats, threads=threads)
            done = row.error or f"{row.produced} tokens, trained in {row.train_seconds:.2f} s"
            print(f"{dataset} {size} {library.name}: {done}", file=sys.stderr, flush=True)
            rows.append(row)
    heading = (f"**{TITLES[dataset]}** (configs/{CONFIGS[dataset]}): {len(train):,} training texts, {len(test):,} test "
               f"texts; throughput over all {len(train) + len(test):,}.")
    return rows, heading


# --- output ----------------------------------------------------------------------------------------------------


def format_table(rows: Sequence[Row], threads: int) -> str:
    """One markdown table; ``(short)``/``(over)`` mark a vocabulary below/above the size asked."""
    many = f"{threads} thread" + ("s" if threads > 1 else "")
    header = (f"| vocab asked | library | vocab made | train s | texts/s, 1 per call | texts/s, batch, 1 thread | "
              f"texts/s, batch, {many} | batch API | tokens / test text | unk % test | model KB |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        if row.error:
            lines.append(f"| {row.requested} | {row.library} | failed: {row.error} |" + " |" * 8)
            continue
        # tokenizers keeps every character of the alphabet, so a tiny size can come out above the one asked.
        made = f"{row.produced}" + (" (short)" if row.produced < row.requested else "")
        made += " (over)" if row.produced > row.requested else ""
        many = f"{row.batch_many:,.0f}" if row.batch_many is not None else "–"
        lines.append(
            f"| {row.requested} | {row.library} | {made} | {row.train_seconds:.2f} | {row.per_call:,.0f} | "
            f"{row.batch_one:,.0f} | {many} | {LIBRARIES[row.library].batch_api} | {row.tokens_per_text:.2f} | "
            f"{100 * row.unk_rate:.3f} | {row.model_bytes / 1024:.1f} |"
        )
    return "\n".join(lines)


def versions() -> str:
    return ", ".join(f"{name} {metadata.version(name)}" for name in LIBRARIES)


def main(argv: Sequence[str] | None = None) -> dict[str, list[Row]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated vocabulary sizes")
    parser.add_argument("--repeats", type=int, default=3, help="training runs (median) and encoding runs (best)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="training threads, and the batch API's threads in the last throughput column")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_DATASET}, {QUICK_SIZE}, 1 repetition")
    parser.add_argument("--readme", action="store_true", help="also write the tables into README.md (bench:tokenizers)")
    args = parser.parse_args(argv)
    if args.quick and args.readme:
        parser.error("--quick figures do not go into README.md: drop --readme")
    datasets = [QUICK_DATASET] if args.quick else [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in datasets if name not in CONFIGS]
    if unknown:
        parser.error(f"--datasets: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    try:
        sizes = [QUICK_SIZE] if args.quick else [int(size) for size in args.sizes.split(",") if size.strip()]
    except ValueError:
        parser.error(f"--sizes takes comma-separated integers. Received: {args.sizes!r}")
    repeats = 1 if args.quick else args.repeats
    if repeats < 1 or args.threads < 1 or not sizes or min(sizes) < 8:
        parser.error("--repeats and --threads must be >= 1, and every --sizes value >= 8")
    for name in LIBRARIES:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed: run `make install-bench` (the bench extra pins it)") from None
    # tokenizers sizes its Rayon pool from this when the pool first starts, so it must be set before any call.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    # The table flags a vocabulary that stopped short; BPETokenizer.train would also log it on every repetition.
    logging.getLogger("tokenization.bpe").setLevel(logging.ERROR)

    load_before = os.getloadavg()[0]
    results: dict[str, list[Row]] = {}
    sections: list[str] = []
    for dataset in datasets:
        rows, heading = run_dataset(dataset, sizes, repeats=repeats, threads=args.threads)
        results[dataset] = rows
        sections.append(f"{heading}\n\n{format_table(rows, args.threads)}")
    command = " ".join(["python benchmarks/tokenizers.py", *(argv if argv is not None else sys.argv[1:])])
    runs = f"{repeats} run" + ("s" if repeats > 1 else "")
    meta = (
        f"Measured {date.today().isoformat()} on {cpu_model()} ({os.cpu_count()} cores; "
        f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end), {versions()}, `{command}`.\n\n"
        "Same text for all three, as the project's BPE sees it: Python `str.lower()` (tokenizer.bpe.lowercase), no "
        "Unicode normalisation (sentencepiece `normalization_rule_name=identity` instead of its NFKC default; no "
        "tokenizers normalizer), every character kept (coverage 1.0), the four specials at ids 0-3 counted in the "
        "vocabulary. Each keeps its own word splitting: youtokentome and sentencepiece split on whitespace and mark "
        "word starts with `▁` (sentencepiece also at script and digit boundaries, pieces of at most 16 characters: its "
        "defaults); tokenizers splits `\\w+|[^\\w\\s]+` (`Whitespace`). "
        f"train s: median of {runs}, each into a fresh temporary directory, from the texts to the model file on disk, "
        f"{args.threads} threads (youtokentome through `BPETokenizer.train`). texts/s: best of {runs} over train + "
        "test, lower-casing included; `1 per call` calls the library once per text. Model: `bpe.model`, `spm.model`, "
        "`tokenizer.json` (as `save()` writes it, indented). (short): the library ran out of pairs to merge before "
        "the size asked."
    )
    body = "\n\n".join([meta, *sections])
    print(body)
    if args.readme:
        write_block("tokenizers", body)
    return results


if __name__ == "__main__":
    main()
