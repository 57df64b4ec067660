"""POST /classify: a classifier folder (teacher or any student) served through its own Batcher.

Mounted next to the encode routes like search's /collections, so it shares the API key, the body limit and
the error mapping (bad texts -> 400, full queue -> 429, closing -> 503). The batcher is the server's own
class: requests are tokenized once, grouped by token budget across concurrent callers, and answered in order.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from .classify import Classifier


class ClassifyRequest(BaseModel):
    texts: list[Any] = Field(description="strings to classify ('a ||| b' for a sentence pair)")


def make_classify_router(path, *, max_batch_tokens: int = 4096, max_queue_texts: int = 16384,
                         max_request_texts: int = 4096, metrics=None) -> APIRouter:
    from bertserve.engine.batcher import Batcher

    classifier = Classifier(path)
    batcher = Batcher(classifier, max_batch_tokens=max_batch_tokens, max_queue_texts=max_queue_texts,
                      max_request_texts=max_request_texts, num_worker=1, metrics=metrics)
    name = Path(path).resolve().name
    router = APIRouter()

    @router.post("/classify", summary="label and per-label probabilities for each text")
    async def classify(req: ClassifyRequest) -> dict:
        encoded = await asyncio.wrap_future(batcher.submit(req.texts))
        return {"model": name, "labels": classifier.label_names, "results": classifier.results(encoded.vectors)}

    # the server closes this batcher at shutdown, after the HTTP front-end stopped taking requests
    router.batcher, router.classifier = batcher, classifier
    return router


def classify_routers(state) -> tuple:
    """The /classify route when the server config names a classifier folder (`serve --classifier DIR`)."""
    path = getattr(state.config, "classifier", None)
    if not path:
        return ()
    cfg = state.config
    return (make_classify_router(path, max_batch_tokens=cfg.max_batch_tokens, max_queue_texts=cfg.max_queue_texts,
                                 max_request_texts=cfg.max_request_texts),)
