"""How much of the encoder's work is padding: token positions and attention scores in batches of 32, unsorted vs
length-sorted (what Encoder does), against the real tokens (what packing or unpadded attention would compute).
Token counts only, so the answer does not depend on the machine or its load.

    PYTHONPATH=. .venv/bin/python benchmarks/padding_work.py [--sentences 4000] [--batch 32]
"""
from __future__ import annotations

import argparse

import numpy as np

from bertserve.encode import Encoder
from bertserve.encode.backends.sample import english_sentences
from bertserve.models.registry import resolve


def padded_work(lengths: np.ndarray, batch: int) -> tuple[int, int]:
    """(token positions, attention scores) when every batch is padded to its longest text."""
    positions = scores = 0
    for i in range(0, len(lengths), batch):
        rows = lengths[i:i + batch]
        longest = int(rows.max())
        positions += longest * len(rows)
        scores += longest * longest * len(rows)
    return positions, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    tokenizer = Encoder(resolve(None)[0], backend="torch").tokenizer
    lengths = np.array([len(item.windows[0]) for item in tokenizer(english_sentences(args.sentences))])
    real_positions, real_scores = int(lengths.sum()), int((lengths ** 2).sum())
    print(f"{len(lengths)} sentences, tokens per text p50 {np.median(lengths):.0f}, p95 {np.percentile(lengths, 95):.0f}, "
          f"max {lengths.max()}; batches of {args.batch}")
    print("| batches | token positions vs real | attention scores vs real |")
    print("|---|---|---|")
    for name, order in (("in the given order", lengths), ("length-sorted (Encoder)", np.sort(lengths))):
        positions, scores = padded_work(order, args.batch)
        print(f"| {name} | {positions / real_positions - 1:+.1%} | {scores / real_scores - 1:+.1%} |")


if __name__ == "__main__":
    main()
