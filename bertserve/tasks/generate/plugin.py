"""`bertserve serve --generator DIR`: the generation routes as a server plug-in.

The Generator schedules its own decoding steps (streams join and leave between steps), so it is not put
behind a shared Batcher; its engine adapter feeds /status, and the server closes it at shutdown after the
HTTP front-end stopped taking requests.
"""
from __future__ import annotations


def plugin(ctx):
    path = getattr(ctx.config, "generator", None)
    if not path:
        return None
    from bertserve.serve.plugins import Plugin
    from bertserve.tasks.generate.engine import GenerateEngine
    from bertserve.tasks.generate.generator import Generator, GeneratorConfig
    from bertserve.tasks.generate.routes import make_router

    cfg = ctx.config
    generator = Generator(path, metrics=ctx.metrics, config=GeneratorConfig(
        max_batch_tokens=cfg.max_batch_tokens,
        max_new_tokens=getattr(cfg, "generator_max_new_tokens", None) or GeneratorConfig.max_new_tokens))
    return Plugin("generate", make_router(generator), GenerateEngine(generator),
                  close=lambda seconds: generator.close(seconds))
