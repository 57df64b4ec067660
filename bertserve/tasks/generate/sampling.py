"""Decoding options of one request and the choice of its next token.

The logits pipeline follows transformers' order (repetition penalty, temperature, top-k, top-p), so greedy
decoding (temperature 0) picks exactly the token `model.generate(do_sample=False)` picks, and sampling uses
the request's own seeded torch.Generator: the same seed gives the same text whatever else is in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bertserve.errors import BadInput, BadInputType


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0            # 0: greedy
    top_k: int = 0                      # 0: off
    top_p: float = 1.0                  # 1: off
    repetition_penalty: float = 1.0     # 1: off; > 1 discourages tokens already in the prompt or output
    stop: tuple[str, ...] = ()          # the text ends before the first of these
    seed: int | None = None
    ignore_eos: bool = False            # benchmarks: always produce max_new_tokens
    stop_ids: tuple[int, ...] = field(default=(), repr=False)   # end-of-text tokens (set by the Generator)

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop or ())
        checks = (("max_new_tokens", int), ("top_k", int), ("temperature", (int, float)), ("top_p", (int, float)),
                  ("repetition_penalty", (int, float)))
        for name, kind in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise BadInputType(f"{name} must be a number, got {type(value).__name__}")
        if self.max_new_tokens < 1:
            raise BadInput(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise BadInput(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise BadInput(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise BadInput(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise BadInput(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise BadInput("stop must be a non-empty string or a list of them")
        if len(self.stop) > 4:
            raise BadInput(f"at most 4 stop strings, got {len(self.stop)}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise BadInputType(f"seed must be an integer, got {type(self.seed).__name__}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def torch_generator(self) -> torch.Generator:
        gen = torch.Generator()
        gen.manual_seed(self.seed if self.seed is not None else torch.seed())
        return gen


def next_token(logits: torch.Tensor, seen: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """One token from a (vocab,) float32 row of logits; `seen` holds the prompt and output ids so far."""
    if params.repetition_penalty != 1.0 and seen.numel():
        picked = logits[seen]
        logits = logits.scatter(0, seen, torch.where(picked < 0, picked * params.repetition_penalty,
                                                     picked / params.repetition_penalty))
    if params.greedy:
        return int(logits.argmax())
    logits = logits / params.temperature
    # the candidates, most likely first: top-k of them (no pass over the whole vocabulary after that), or
    # the whole vocabulary sorted when only top-p is on
    index = None
    if params.top_k and params.top_k < logits.numel():
        logits, index = torch.topk(logits, params.top_k)
    if params.top_p < 1.0:
        if index is None:
            logits, index = torch.sort(logits, descending=True)
        probs = logits.softmax(-1)
        # drop a token once the more likely ones already cover top_p; the most likely always stays
        keep = int(((probs.cumsum(-1) - probs) <= params.top_p).sum())
        logits, index = logits[:keep], index[:keep]
    pick = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
    return pick if index is None else int(index[pick])
