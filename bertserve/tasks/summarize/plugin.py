"""/summarize and /keywords as a server plug-in: on whenever the served model gives one vector per text.

No engine or batcher of its own: sentences and keyword candidates are ordinary encode work, so they go
through the server's encode batcher (see routes.py), and show in /metrics under the encode engine.
"""
from __future__ import annotations


def plugin(ctx):
    from bertserve.serve.plugins import Plugin

    encoder = ctx.encoder
    if str(getattr(encoder.config, "pooling", "")).upper() == "NONE":
        return None  # token vectors: no sentence vector to rank
    from bertserve.tasks.summarize.routes import make_router

    router = make_router(ctx.encode_batcher, window=encoder.max_seq_len, model_name=ctx.model_name or encoder.name)
    return Plugin("summarize", router)
