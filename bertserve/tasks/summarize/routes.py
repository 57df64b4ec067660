"""POST /summarize and POST /keywords, embedding through the server's encode batcher.

No batcher of their own: a summary's sentences are ordinary encode work, so they join the same queue as
/encode requests, under the same token budget, fairness (a long article does not hold up a one-line
request) and backpressure (429 when the queue is full). Splitting and ranking run in a worker thread, not
on the event loop, because a large text takes a moment to split.
"""
from __future__ import annotations

import asyncio

import numpy as np
from anyio import to_thread
from fastapi import APIRouter
from pydantic import BaseModel, Field

from bertserve.tasks.summarize.document import checked_vectors
from bertserve.tasks.summarize.keywords import KeywordOptions, finish_keywords, prepare_keywords
from bertserve.tasks.summarize.summarize import SummaryOptions, finish_summary, prepare_summary

_S, _K = SummaryOptions(), KeywordOptions()


class SummarizeRequest(BaseModel):
    text: str = Field(description="the document: Chinese, English or mixed")
    method: str = Field(_S.method, description="centroid, textrank or lexrank")
    ratio: float | None = Field(None, description="fraction of the sentences to keep (default 0.2)")
    num_sentences: int | None = Field(None, description="keep exactly this many sentences")
    max_chars: int | None = Field(None, description="cap on the summary's length in characters")
    diversity: float = Field(_S.diversity, description="MMR redundancy penalty, 0..1")


class KeywordsRequest(BaseModel):
    text: str = Field(description="the document: Chinese, English or mixed")
    top_n: int = _K.top_n
    diversity: float = Field(_K.diversity, description="MMR diversity, 0..1")
    max_ngram: int = Field(_K.max_ngram, description="longest English phrase, in words")
    max_candidates: int = Field(_K.max_candidates, description="most frequent candidates considered")


def make_router(batcher, *, window: int, model_name: str) -> APIRouter:
    """The routes; `batcher` is the server's encode batcher (`submit(texts)` -> Future of vectors)."""
    router = APIRouter()

    async def embed(texts: list[str]) -> np.ndarray:
        step = batcher.max_request_texts  # the batcher's per-request bound; one document may exceed it
        parts = await asyncio.gather(*(asyncio.wrap_future(batcher.submit(texts[i:i + step]))
                                       for i in range(0, len(texts), step)))
        return checked_vectors(np.concatenate([p.vectors for p in parts]), len(texts))

    @router.post("/summarize", summary="extractive summary: the most central sentences, in document order")
    async def summarize(req: SummarizeRequest) -> dict:
        options = req.model_dump(exclude={"text"}, exclude_none=True)
        job = await to_thread.run_sync(lambda: prepare_summary(req.text, window, **options))
        summary = await to_thread.run_sync(finish_summary, job, await embed(job.texts))
        return {"model": model_name, **summary.to_dict()}

    @router.post("/keywords", summary="keywords and keyphrases closest to the document, with MMR diversity")
    async def keywords(req: KeywordsRequest) -> dict:
        options = req.model_dump(exclude={"text"})
        job = await to_thread.run_sync(lambda: prepare_keywords(req.text, window, **options))
        found = await to_thread.run_sync(finish_keywords, job, await embed(job.texts))
        return {"model": model_name, "keywords": [k.to_dict() for k in found]}

    return router

