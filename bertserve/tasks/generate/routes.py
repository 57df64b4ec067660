"""OpenAI-compatible text generation over HTTP: POST /v1/completions and POST /v1/chat/completions.

The request and response shapes are OpenAI's (so the `openai` client works unchanged), plus three fields
vLLM also takes: `top_k`, `repetition_penalty` and `ignore_eos`. Every check that can fail (prompt too long, max_tokens
over the cap, n too large, negative temperature, no chat template) runs before a response starts, so a bad
request is a 400 with a message, never a broken stream. Streams are server-sent events ending with
`data: [DONE]`; a client that disconnects mid-stream cancels its streams, which leave the batch at the next
decoding step.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, Union

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bertserve.errors import BadInput
from bertserve.tasks.generate.generator import Event, Generator

MAX_N = 8               # choices per prompt
MAX_PROMPTS = 64        # prompts per request


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")    # OpenAI fields we do not act on (user, logit_bias, ...)

    model: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Any = None
    top_k: int = Field(0, description="keep the k most likely tokens (0: all); a vLLM extension")
    repetition_penalty: float = Field(1.0, description="> 1 discourages repeats (transformers' definition)")
    ignore_eos: bool = Field(False, description="generate max_tokens even past end tokens; a vLLM extension")


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = 16
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list[dict], None] = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


def _unsupported(req: _Sampling):
    if req.logprobs not in (None, False, 0):
        raise BadInput("logprobs is not supported by this server")
    if req.presence_penalty or req.frequency_penalty:
        raise BadInput("presence_penalty and frequency_penalty are not supported; use repetition_penalty")
    if getattr(req, "echo", False) or getattr(req, "suffix", None):
        raise BadInput("echo and suffix are not supported")
    if (getattr(req, "best_of", None) or 1) > 1:
        raise BadInput("best_of is not supported")
    if not 1 <= req.n <= MAX_N:
        raise BadInput(f"n must be in 1..{MAX_N}, got {req.n}")


def _prompts(prompt) -> list:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if not prompt:
        raise BadInput("prompt is empty")
    if len(prompt) > MAX_PROMPTS:
        raise BadInput(f"{len(prompt)} prompts in one request; at most {MAX_PROMPTS}")
    return list(prompt)


def _chat_content(message: ChatMessage) -> dict:
    content = message.content
    if isinstance(content, list):   # OpenAI content parts: only text parts are meaningful here
        if any(part.get("type") != "text" for part in content):
            raise BadInput("only text content parts are supported")
        content = "".join(str(part.get("text", "")) for part in content)
    return {"role": message.role, "content": content or ""}


class _Request:
    """One HTTP request's streams (prompts x n), submitted together, answered together."""

    def __init__(self, generator: Generator, prompt_ids: list[list[int]], req: _Sampling, max_tokens: int,
                 loop: asyncio.AbstractEventLoop):
        self.events: asyncio.Queue = asyncio.Queue()
        self.streams = []
        self.prompt_tokens = sum(len(p) for p in prompt_ids)
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        try:
            for p, ids in enumerate(prompt_ids):
                for j in range(req.n):
                    index = p * req.n + j
                    seed = None if req.seed is None else req.seed + index

                    def listener(event: Event, index=index):
                        loop.call_soon_threadsafe(self.events.put_nowait, (index, event))

                    self.streams.append(generator.submit(
                        ids, listener, max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                        top_k=req.top_k, repetition_penalty=req.repetition_penalty, stop=stop, seed=seed,
                        ignore_eos=req.ignore_eos))
        except BaseException:
            self.cancel()
            raise

    def cancel(self):
        for s in self.streams:
            s.cancel()

    async def results(self) -> list:
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(s.future) for s in self.streams)))
        finally:
            self.cancel()   # a no-op for finished streams; frees the slots if this handler is cancelled

    async def events_until_done(self):
        """(choice index, Event) as the streams produce them, until every stream is done or failed."""
        left = len(self.streams)
        while left:
            index, event = await self.events.get()
            if event.kind in ("done", "error"):
                left -= 1
            yield index, event

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def make_router(generator: Generator, name: str | None = None) -> APIRouter:
    """The generation routes over one Generator (its scheduler batches all requests' streams together)."""
    model_name = name or Path(generator.name).name or "generator"
    router = APIRouter(tags=["generate"])

    def check_max_tokens(value: int | None, default: int) -> int:
        value = default if value is None else value
        if value < 1:
            raise BadInput(f"max_tokens must be >= 1, got {value}")
        return value

    async def answer(req: _Sampling, prompt_ids: list[list[int]], max_tokens: int, chat: bool):
        kind = "chat.completion" if chat else "text_completion"
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        request = _Request(generator, prompt_ids, req, max_tokens, asyncio.get_running_loop())
        head = {"id": rid, "created": created, "model": model_name}
        if not req.stream:
            done = await request.results()
            if chat:
                choices = [{"index": i, "message": {"role": "assistant", "content": c.text},
                            "logprobs": None, "finish_reason": c.finish_reason} for i, c in enumerate(done)]
            else:
                choices = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                           for i, c in enumerate(done)]
            return {**head, "object": kind, "choices": choices,
                    "usage": request.usage(sum(c.completion_tokens for c in done))}

        include_usage = bool((req.stream_options or {}).get("include_usage"))
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
            return _sse({**head, "object": chunk_kind, "choices": [choice]})

        async def body():
            completion_tokens = 0
            try:
                if chat:
                    for i in range(len(request.streams)):
                        yield chunk(i, None, None, first=True)
                async for index, event in request.events_until_done():
                    if event.kind == "text":
                        yield chunk(index, event.text, None)
                    elif event.kind == "done":
                        completion_tokens += event.completion.completion_tokens
                        yield chunk(index, None, event.completion.finish_reason)
                    else:
                        yield _sse({"error": {"message": str(event.error), "type": "internal_error",
                                              "code": 500}})
                if include_usage:
                    yield _sse({**head, "object": chunk_kind, "choices": [],
                                "usage": request.usage(completion_tokens)})
                yield "data: [DONE]\n\n"
            finally:
                request.cancel()   # the client went away (or we are done): free the slots

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.post("/v1/completions", summary="OpenAI text completion (streaming with stream=true)")
    async def completions(req: CompletionRequest):
        _unsupported(req)
        prompt_ids = [generator.encode_prompt(p) for p in _prompts(req.prompt)]
        return await answer(req, prompt_ids, check_max_tokens(req.max_tokens, 16), chat=False)

    @router.post("/v1/chat/completions", summary="OpenAI chat completion, for models with a chat template")
    async def chat_completions(req: ChatRequest):
        _unsupported(req)
        if not req.messages:
            raise BadInput("messages is empty")
        prompt_ids = [generator.chat_prompt([_chat_content(m) for m in req.messages])]
        room = max(1, generator.context - len(prompt_ids[0]) - 1)
        default = min(generator.config.max_new_tokens, room)
        limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        return await answer(req, prompt_ids, check_max_tokens(limit, default), chat=True)

    router.generator = generator
    return router
