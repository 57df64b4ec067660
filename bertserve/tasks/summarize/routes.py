"""POST /summarize and POST /keywords over their engines' batchers (engine.py).

Each route's document is one request to its own Batcher: the batcher splits and tokenizes it on its
tokenizer lanes (a large text never blocks the event loop or a small request's preparation), packs its
sentence pieces into token-budget batches, and answers 429 when its queue is full. Bad input raises
bertserve.errors in `prepare`, which the server maps as for /encode.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel, Field

from bertserve.tasks.summarize.keywords import KeywordOptions
from bertserve.tasks.summarize.summarize import SummaryOptions

_S, _K = SummaryOptions(), KeywordOptions()


class SummarizeRequest(BaseModel):
    text: str = Field(description="the document: Chinese, English or mixed")
    method: str = Field(_S.method, description="blend, centroid, textrank or lexrank")
    ratio: float | None = Field(None, description="fraction of the sentences to keep (default 0.2)")
    num_sentences: int | None = Field(None, description="keep exactly this many sentences")
    max_chars: int | None = Field(None, description="cap on the summary's length in characters")
    diversity: float = Field(_S.diversity, description="MMR redundancy penalty, 0..1")
    position: float = Field(_S.position, description="weight of the prior for the opening sentences (0: none)")


class KeywordsRequest(BaseModel):
    text: str = Field(description="the document: Chinese, English or mixed")
    top_n: int = _K.top_n
    diversity: float = Field(_K.diversity, description="MMR diversity, 0..1")
    max_ngram: int = Field(_K.max_ngram, description="longest English phrase, in words")
    max_candidates: int = Field(_K.max_candidates, description="most frequent candidates considered")


def make_router(summarize_batcher, keywords_batcher) -> APIRouter:
    """The routes; each batcher serves a SummarizeEngine / KeywordsEngine (`submit([text], **options)`)."""
    router = APIRouter()
    model_name = summarize_batcher.engine.name

    @router.post("/summarize", summary="extractive summary: the most central sentences, in document order")
    async def summarize(req: SummarizeRequest) -> dict:
        options = req.model_dump(exclude={"text"}, exclude_none=True)
        summary = await asyncio.wrap_future(summarize_batcher.submit([req.text], **options))
        return {"model": model_name, **summary}

    @router.post("/keywords", summary="keywords and keyphrases closest to the document, with MMR diversity")
    async def keywords(req: KeywordsRequest) -> dict:
        options = req.model_dump(exclude={"text"})
        found = await asyncio.wrap_future(keywords_batcher.submit([req.text], **options))
        return {"model": model_name, "keywords": found}

    return router
