"""POST /ner: entity spans for each text, served by the shared batcher.

Request `{"texts": ["...", ...]}`; answer `{"model": name, "labels": [...], "results": [[{"text", "label", "start",
"end", "score"}, ...], ...]}` with one list per text and character offsets into the text as sent (end
exclusive, Python string indices: one per Unicode code point). Bad input is answered as for /encode (400 with
the error body; too many texts 413; full queue 429), because the engine raises bertserve.errors classes and
the server maps them in its one place.
"""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter  # light: the server has already imported it
from pydantic import BaseModel, Field


class NerRequest(BaseModel):
    texts: list[Any] = Field(description="texts to tag; offsets in the answer index into these strings")


def make_router(batcher) -> APIRouter:
    """The /ner route over `batcher` (a bertserve.engine Batcher serving a NerEngine)."""
    engine = batcher.engine
    router = APIRouter()

    @router.post("/ner", summary="named entities with character offsets for each text")
    async def ner(req: NerRequest) -> dict:
        results = await asyncio.wrap_future(batcher.submit(req.texts))
        return {"model": engine.name, "labels": engine.tagger.labels, "results": results}

    return router


def plugin(ctx):
    """The server plug-in: POST /ner when the server config names a tagger folder (`serve --ner DIR`)."""
    path = getattr(ctx.config, "ner", None)
    if not path:
        return None
    from bertserve.serve.plugins import Plugin

    from .engine import NerEngine
    from .model import load_tagger

    batcher = ctx.batcher(NerEngine(load_tagger(path)))
    return Plugin("ner", make_router(batcher), batcher.engine, batcher)
