"""Server composition: every task the server can run beside encoding is a plug-in.

A plug-in module exposes `plugin(ctx: ServeContext) -> Plugin | list[Plugin] | None`, returning None when the
server config does not ask for it (a list when one module serves several engines, e.g. summarize and keywords). It contributes an engine (served through its own Batcher, made by `ctx.batcher`, so its
requests, batches and errors show in /metrics and /status under its engine label), a FastAPI router (mounted
behind the server's API key, body limit and error mapping) and a close hook. The server knows plug-ins only
through PLUGIN_MODULES: adding a task adds a line here, and nothing in the batcher, the app or the errors.

Plug-in modules must import nothing heavy at module level (the heavy parts load inside `plugin`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

PLUGIN_MODULES: tuple[str, ...] = (
    "bertserve.search.plugin",          # /collections (with --data-dir)
    "bertserve.distill.classify_plugin",  # /classify (with --classifier)
    "bertserve.tasks.ner.routes",         # /ner (with --ner)
    "bertserve.tasks.generate.plugin",  # /v1/completions, /v1/chat/completions (with --generator)
    "bertserve.tasks.summarize.plugin",   # /summarize, /keywords (whenever the model gives sentence vectors)
)


@dataclass
class Plugin:
    name: str                                  # what it serves, e.g. "classify"
    router: Any = None                         # a fastapi.APIRouter
    engine: Any = None                         # a bertserve.engine.contract.Engine, if it has one
    batcher: Any = None                        # the engine's Batcher (made with ServeContext.batcher)
    close: Callable[[float], object] | None = None  # called at shutdown with the seconds left

    def describe(self) -> dict:
        return self.engine.describe() if self.engine is not None else {"kind": self.name}


@dataclass
class ServeContext:
    """What a plug-in may use of the running server."""

    config: Any                 # ServerConfig
    metrics: Any                # bertserve.engine.metrics.Metrics
    encoder: Any                # the main encode engine
    encode_batcher: Any         # its Batcher: for plug-ins that need vectors (search, summaries)
    batchers: list = field(default_factory=list)
    model_name: str = ""        # the served model's name as clients see it (ServerState.model_name)

    def batcher(self, engine, **overrides):
        """A Batcher for `engine` with the server's limits and metrics."""
        from bertserve.engine.batcher import Batcher

        cfg = self.config
        limits = dict(max_batch_tokens=cfg.max_batch_tokens, max_queue_texts=cfg.max_queue_texts,
                      max_request_texts=cfg.max_request_texts, num_worker=1)
        batcher = Batcher(engine, metrics=self.metrics, **{**limits, **overrides})
        self.batchers.append(batcher)
        return batcher

    def batched_encoder(self):
        """An Encoder look-alike whose calls go through the main encode batcher."""
        from bertserve.engine.batcher import BatchedEncoder

        return BatchedEncoder(self.encode_batcher)


def load_plugins(ctx: ServeContext, modules: tuple[str, ...] = PLUGIN_MODULES) -> list[Plugin]:
    plugins = []
    for name in modules:
        made = importlib.import_module(name).plugin(ctx)
        if made is not None:
            plugins.extend(made if isinstance(made, list) else [made])
    return plugins
