"""/collections as a server plug-in (`serve --data-dir DIR`): texts are embedded through the encode batcher."""
from __future__ import annotations


def plugin(ctx):
    from bertserve.serve.plugins import Plugin

    if not ctx.config.data_dir:
        return None
    from bertserve.search.routes import make_router

    router = make_router(ctx.config.data_dir, ctx.batched_encoder())
    return Plugin("collections", router, close=lambda seconds: router.registry.close())
