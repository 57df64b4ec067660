"""The HTTP API: bert-as-service's POST /encode, OpenAI's POST /v1/embeddings, /status, /health, /metrics.

Handlers only translate: every encode call ends in `state.batcher.submit`, the same call the ZeroMQ
front-end makes. Responses holding vectors are serialized by hand (json.dumps on lists, or base64 of the
raw float32 bytes) because FastAPI's generic encoder walks every float in Python and dominated the time.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from typing import Any, Literal

import numpy as np
from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

import bertserve
from bertserve.console import STATIC_DIR
from bertserve.errors import BadInput, TooLarge, Unauthorized
from bertserve.serve.errors import error_response, install_error_handlers
from bertserve.serve.state import ServerState

# beyond this many floats, serializing the answer moves off the event loop so other requests keep flowing
INLINE_FLOATS = 64 * 1024


class EncodeRequest(BaseModel):
    """bert-as-service's HTTP body, plus optional fields it did not have."""
    id: int | str | None = None
    # items are checked by the tokenizer, so both protocols word a bad text the same way
    texts: list[Any] = Field(description="strings ('a ||| b' for a pair), or token lists with is_tokenized")
    is_tokenized: bool = False
    show_tokens: bool = Field(False, description="include tokens (server must run with --show-tokens-to-client)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: `result` is the raw little-endian array, with `dtype` and `shape`")


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings body."""
    input: str | list[Any] = Field(description="a string or a list of strings")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def make_app(state: ServerState, routers: tuple[APIRouter, ...] = ()) -> FastAPI:
    """Build the app; `routers` (e.g. search's /collections) are mounted behind the same API key."""
    cfg = state.config
    app = FastAPI(title="bertserve", version=getattr(bertserve, "__version__", "0"),
                  description="Text to vectors with BERT-family models: bert-as-service and OpenAI compatible.")
    app.state.bertserve = state
    install_error_handlers(app, state.metrics)
    api = APIRouter(dependencies=[Depends(_api_key_check(cfg.api_key))])

    @api.post("/encode", summary="bert-as-service encode")
    async def encode(req: EncodeRequest) -> Response:
        tokenized_input = bool(req.texts) and isinstance(req.texts[0], list)
        if tokenized_input != req.is_tokenized:
            raise BadInput("texts holds token lists but is_tokenized is false" if tokenized_input
                           else "is_tokenized is true but texts holds strings, not token lists")
        if req.show_tokens and not cfg.show_tokens_to_client:
            raise BadInput("show_tokens is disabled on this server (start it with --show-tokens-to-client)")
        enc = await _encode(state, req.texts, req.is_tokenized, req.show_tokens)
        body: dict[str, Any] = {"id": req.id}
        if req.encoding_format == "base64":
            arr = np.ascontiguousarray(enc.vectors.astype(enc.vectors.dtype.newbyteorder("<")))
            body.update(result=base64.b64encode(arr.tobytes()).decode(), dtype=arr.dtype.name, shape=arr.shape)
        else:
            body["result"] = enc.vectors
        if req.show_tokens:
            body["tokens"] = enc.tokens
        return await _json(body, enc.vectors.size)

    @api.post("/v1/embeddings", summary="OpenAI embeddings")
    async def embeddings(req: EmbeddingsRequest) -> Response:
        texts = [req.input] if isinstance(req.input, str) else req.input
        first = texts[0] if texts else None
        if isinstance(first, int) or (isinstance(first, list) and first and isinstance(first[0], int)):
            raise BadInput("input as token ids is not supported here: send a string or a list of strings")
        if state.pools_per_token:
            raise BadInput("this server pools per token (pooling NONE), which gives no single vector per "
                           "input; use POST /encode")
        dim = state.encoder.dim
        if req.dimensions is not None and req.dimensions != dim:
            if req.dimensions > dim:
                raise BadInput(f"dimensions={req.dimensions} exceeds the model's {dim}")
            if not cfg.allow_dimensions:
                raise BadInput(f"model {state.model_name} was not trained for shortened vectors "
                               f"(Matryoshka); dimensions must be {dim} or left out "
                               "(start the server with --allow-dimensions to truncate anyway)")
        enc = await _encode(state, texts, False)
        vectors = enc.vectors.astype("<f4", copy=False)
        if req.dimensions is not None and req.dimensions < dim:
            vectors = vectors[:, :req.dimensions]
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1)
        if req.encoding_format == "base64":
            rows = [base64.b64encode(np.ascontiguousarray(v).tobytes()).decode() for v in vectors]
        else:
            rows = vectors
        body = {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
                "model": state.model_name,
                "usage": {"prompt_tokens": enc.num_tokens, "total_tokens": enc.num_tokens}}
        return await _json(body, vectors.size)

    @api.get("/v1/models", summary="OpenAI model list")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": state.model_name, "object": "model",
                                            "created": int(state.started_at), "owned_by": "bertserve"}]}

    @api.get("/status", summary="server config and statistics (bert-as-service server_status)")
    @api.get("/status/server", include_in_schema=False)
    async def status() -> dict:
        return state.server_status()

    @api.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/health", summary="liveness: 200 while serving, 503 while shutting down")
    async def health() -> JSONResponse:
        closing = state.batcher.closing
        return JSONResponse({"status": "shutting_down" if closing else "ok"}, status_code=503 if closing else 200)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    # the console's files are public; every call it makes goes through the API key like any client's
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="console")
    app.include_router(api)
    for router in routers:
        app.include_router(router, dependencies=[Depends(_api_key_check(cfg.api_key))])
    if cfg.cors:
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(_BodyLimit, limit=cfg.max_payload_bytes, state=state)
    app.add_middleware(_Timing, metrics=state.metrics)
    return app


async def _encode(state: ServerState, texts, is_tokenized, show_tokens=False):
    return await asyncio.wrap_future(state.batcher.submit(texts, is_tokenized=is_tokenized, show_tokens=show_tokens))


async def _json(body: dict, n_floats: int) -> Response:
    if n_floats > INLINE_FLOATS:
        content = await to_thread.run_sync(_dumps, body)
    else:
        content = _dumps(body)
    return Response(content, media_type="application/json")


def _dumps(body) -> bytes:
    return json.dumps(body, separators=(",", ":"), default=_array_default).encode()


def _array_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _api_key_check(api_key: str | None):
    expected = api_key.encode() if api_key else None

    async def check(request: Request):
        if expected is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), expected):
            raise Unauthorized("missing or wrong API key (send 'Authorization: Bearer KEY')")
    return check


class _BodyLimit:
    """413 for bodies over the limit, checked before anything parses them (chunked bodies too)."""

    def __init__(self, app, limit: int, state: ServerState):
        self.app, self.limit, self.state = app, limit, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await self._refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        # no length given (chunked): read it all here, bounded, then replay it to the app
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)

        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:  # later reads only wait for the client to go away
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        resp = error_response(413, TooLarge.type, f"request body over the server's limit of {self.limit} bytes",
                              self.state.metrics)
        await resp(scope, receive, send)


class _Timing:
    """Counts every HTTP request by route and times it from arrival to the end of the response."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.observe_request("http", f"{scope['method']} {endpoint}", time.perf_counter() - t0)
