"""GPT-style text generation: load causal language models, decode them with a KV cache and continuous
batching, serve them over the OpenAI completions API, and train a small GPT-2 on your own corpus."""
from __future__ import annotations

__all__ = ["Generator", "GeneratorConfig", "Completion", "SamplingParams", "TrainConfig", "train_lm",
           "load_causal_lm"]


def __getattr__(name):   # keep `import bertserve.tasks.generate` (and the CLI's --help) free of torch
    if name in ("Generator", "GeneratorConfig", "Completion"):
        from bertserve.tasks.generate import generator
        return getattr(generator, name)
    if name == "SamplingParams":
        from bertserve.tasks.generate.sampling import SamplingParams
        return SamplingParams
    if name in ("TrainConfig", "train_lm"):
        from bertserve.tasks.generate import train
        return getattr(train, name)
    if name == "load_causal_lm":
        from bertserve.tasks.generate.models import load_causal_lm
        return load_causal_lm
    raise AttributeError(name)
