"""Where a tokenizer loses: test accuracy of trained versions on the test texts that hold a word the training split
lacks and on the rest, and, for a BPE version, the same with every unseen word read as one unk instead of its
pieces (what a word vocabulary does with it).

    .venv/bin/python benchmarks/unseen_words.py --config configs/trec-word.yaml VERSION_DIR [VERSION_DIR ...]

``--config`` names the data (its data section is read; the split is the config's own, as the versions were trained
on). Words are what the config's word tokenizer finds (tokenizer.word.token_pattern and lowercase).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="the config whose data the versions were trained on")
    parser.add_argument("versions", nargs="+", type=Path)
    args = parser.parse_args()

    import numpy as np

    from lifecycle.artifacts import load_version
    from lifecycle.config import load_config
    from lifecycle.corpus import load_corpus
    from lifecycle.inference import Predictor
    from tokenization.base import UNK, pad_rows

    cfg = load_config(args.config)
    pattern, lowercase = re.compile(cfg.tokenizer.word.token_pattern), cfg.tokenizer.word.lowercase

    def words(text: str) -> list[str]:
        return pattern.findall(text.lower() if lowercase else text)

    corpus = load_corpus(cfg.data, cfg.name, report=False)
    known = {w for text in corpus.train.texts for w in words(text)}
    texts = list(corpus.test.texts)
    y = np.array([corpus.labels.index(label) for label in corpus.test.labels])
    unseen = np.array([any(w not in known for w in words(t)) for t in texts])
    print(f"{len(texts)} test texts, {int(unseen.sum())} with a word the training split lacks")
    print("| version | all % | with an unseen word % | without % | BPE, unseen words as unk: all % | with % |")
    print("|---|---|---|---|---|---|")
    sums: dict[str, list[float]] = {}
    for directory in args.versions:
        version = load_version(directory)
        predictor = Predictor(version)
        ok = predictor.predict_proba(texts).argmax(1) == y
        cells = [100 * ok.mean(), 100 * ok[unseen].mean(), 100 * ok[~unseen].mean()]
        tokenizer = predictor.tokenizer
        if tokenizer.kind == "bpe":
            rows = [[i for w in words(t) for i in (tokenizer.tokenize_ids([w])[0] if w in known else [UNK])]
                    for t in texts]
            ok_unk = predictor.predict_ids(pad_rows(rows, predictor.max_len)).argmax(1) == y
            cells += [100 * ok_unk.mean(), 100 * ok_unk[unseen].mean()]
        print(f"| {directory.name} | " + " | ".join(f"{c:.1f}" for c in cells) + (" | - | -" * (len(cells) == 3))
              + " |")
        sums.setdefault(tokenizer.kind, []).append(cells[1] - cells[2])
    for kind, gaps in sums.items():
        print(f"{kind}: with-unseen minus without, mean {statistics.fmean(gaps):+.1f} points over {len(gaps)}")


if __name__ == "__main__":
    main()
