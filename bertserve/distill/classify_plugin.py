"""POST /classify: a classifier folder (teacher or any student) as a server plug-in (`serve --classifier DIR`).

The Classifier is an engine like the Encoder: requests are tokenized once, grouped by token budget across
concurrent callers in its own Batcher, and answered in order; errors and metrics are the server's.
"""
from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field


class ClassifyRequest(BaseModel):
    texts: list[Any] = Field(description="strings to classify ('a ||| b' for a sentence pair)")


def make_router(batcher):
    from fastapi import APIRouter

    classifier = batcher.engine
    router = APIRouter()

    @router.post("/classify", summary="label and per-label probabilities for each text")
    async def classify(req: ClassifyRequest) -> dict:
        results = await asyncio.wrap_future(batcher.submit(req.texts))
        return {"model": classifier.name, "labels": classifier.label_names, "results": results}

    return router


def plugin(ctx):
    from bertserve.serve.plugins import Plugin

    path = getattr(ctx.config, "classifier", None)
    if not path:
        return None
    from bertserve.distill.classify import Classifier

    batcher = ctx.batcher(Classifier(path))
    return Plugin("classify", make_router(batcher), batcher.engine, batcher)
