"""/summarize and /keywords as server plug-ins: on whenever the served model gives one vector per text.

Two engines over the served encoder (engine.py), each with its own Batcher made by the server, so their
requests, batches and errors show in /metrics and /status under "summarize" and "keywords".
"""
from __future__ import annotations


def plugin(ctx):
    from bertserve.serve.plugins import Plugin

    encoder = ctx.encoder
    if str(getattr(encoder.config, "pooling", "")).upper() == "NONE":
        return None  # token vectors: no sentence vector to rank
    from bertserve.tasks.summarize.engine import KeywordsEngine, SummarizeEngine
    from bertserve.tasks.summarize.routes import make_router

    name = ctx.model_name or encoder.name
    summarize = ctx.batcher(SummarizeEngine(encoder, name))
    keywords = ctx.batcher(KeywordsEngine(encoder, name))
    return [Plugin("summarize", make_router(summarize, keywords), summarize.engine, summarize),
            Plugin("keywords", None, keywords.engine, keywords)]
