"""Generation on the engine contract, for the parts of the server that see every task alike (/status, the
plug-in list, in-process calls).

A generation "batch" is a decoding step, which the Generator's own scheduler forms across requests (streams
join and leave between steps); so `run` hands each prompt to the Generator and waits, and the shared Batcher
is not put in front of it: it would only add a queue before the Generator's queue.
"""
from __future__ import annotations

from dataclasses import dataclass

from bertserve.engine.contract import Engine, Prepared
from bertserve.tasks.generate.generator import Generator
from bertserve.tasks.generate.sampling import SamplingParams


@dataclass
class PromptItem:
    prompt_ids: list[int]
    params: SamplingParams
    num_tokens: int              # prompt plus the most it may generate: what it can cost the cache


class GenerateEngine(Engine):
    kind = "generate"

    def __init__(self, generator: Generator):
        self.generator = generator

    @property
    def name(self) -> str:
        return self.generator.name

    def prepare(self, inputs: list, **options) -> Prepared:
        items = []
        for i, prompt in enumerate(inputs):
            ids = self.generator.encode_prompt(prompt)
            seed = options.get("seed")
            params = SamplingParams(**{**options, "seed": None if seed is None else seed + i})
            self.generator.check(ids, params)
            items.append(PromptItem(ids, params, len(ids) + params.max_new_tokens))
        return Prepared(items)

    def run(self, items: list) -> list:
        fields = SamplingParams.__dataclass_fields__
        streams = [self.generator.submit(it.prompt_ids, **{k: getattr(it.params, k) for k in fields
                                                           if k != "stop_ids"}) for it in items]
        return [s.future.result() for s in streams]

    def finish(self, prepared: Prepared, rows: list) -> list:
        return rows

    def describe(self) -> dict:
        return self.generator.describe()
