"""Transfer-set augmentation after Tang et al. 2019 ("Distilling task-specific knowledge from BERT into
simple neural networks"), section 3.

Each synthetic example starts from a real one; every token is replaced by the mask token with
probability p_mask, and with probability p_ngram the result is cut down to a random n-gram (n drawn
uniformly from ngram_range). Tokens are the teacher tokenizer's, so Chinese text is masked per character.
The teacher labels the synthetic examples; they carry no hard label. (Tang et al.'s third rule, swapping
a word for another of the same part of speech, needs a POS tagger and is left out.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bertserve.errors import BadInput

from .data import Example


@dataclass
class AugmentConfig:
    copies: int = 0              # synthetic examples per real one (Tang et al. used 20)
    p_mask: float = 0.1
    p_ngram: float = 0.25
    ngram_range: tuple[int, int] = (1, 5)
    seed: int = 0

    def __post_init__(self):
        if self.copies < 0:
            raise BadInput(f"augmentation copies must be >= 0, got {self.copies}")
        for name in ("p_mask", "p_ngram"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BadInput(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        lo, hi = self.ngram_range
        if not 1 <= lo <= hi:
            raise BadInput(f"ngram_range must satisfy 1 <= low <= high, got {self.ngram_range}")


def augment_tokens(tokens: list[str], mask_token: str, config: AugmentConfig, rng: random.Random) -> list[str]:
    out = [mask_token if rng.random() < config.p_mask else t for t in tokens]
    if out and rng.random() < config.p_ngram:
        n = min(rng.randint(*config.ngram_range), len(out))
        start = rng.randrange(len(out) - n + 1)
        out = out[start:start + n]
    return out


def augment_examples(examples: list[Example], tokenizer, config: AugmentConfig) -> list[Example]:
    """Synthetic, unlabelled examples (config.copies per input), deterministic for a given seed.

    Duplicates of an original text or of each other are dropped: they would only re-weight the set."""
    if config.copies == 0:
        return []
    if tokenizer.mask_token is None:
        raise BadInput("augmentation needs a tokenizer with a mask token")
    rng = random.Random(config.seed)
    seen = {(e.text, e.text_b) for e in examples}
    out = []
    for e in examples:
        tokens_a = tokenizer.tokenize(e.text)
        tokens_b = tokenizer.tokenize(e.text_b) if e.text_b is not None else None
        for _ in range(config.copies):
            a = tokenizer.convert_tokens_to_string(augment_tokens(tokens_a, tokenizer.mask_token, config, rng)).strip()
            b = None
            if tokens_b is not None:
                b = tokenizer.convert_tokens_to_string(augment_tokens(tokens_b, tokenizer.mask_token, config, rng)).strip()
            key = (a, b)
            if a and key not in seen:
                seen.add(key)
                out.append(Example(text=a, text_b=b))
    return out
