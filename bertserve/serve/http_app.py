"""The HTTP API: bert-as-service's POST /encode, OpenAI's POST /v1/embeddings, /status, /health, /metrics.

Handlers only translate: every encode call ends in the served model's `batcher.submit`, the same call the ZeroMQ
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


class EncodeOptions(BaseModel):
    """Per-request choices on top of the server's settings; requests with different ones share batches."""
    model: str | None = Field(None, description="which served model (GET /v1/models); default: the first")
    input_type: str | None = Field(None, description="the model's prompt to put in front of each text "
                                   "(multilingual-e5-small: query or passage; 'document' means passage)")
    prompt: str | None = Field(None, description="the same as input_type")
    pooling: str | None = Field(None, description="REDUCE_MEAN, CLS_TOKEN, REDUCE_MAX, ... (default: the server's)")
    layers: int | list[int] | None = Field(None, description="hidden layer(s) to pool, e.g. -1 or [-1, -2]")
    normalize: bool | None = None
    max_seq_len: int | None = None
    long_text: Literal["truncate", "chunk"] | None = None


class EncodeRequest(EncodeOptions):
    """bert-as-service's HTTP body, plus optional fields it did not have."""
    id: int | str | None = None
    # items are checked by the tokenizer, so both protocols word a bad text the same way
    texts: list[Any] = Field(description="strings ('a ||| b' for a pair), or token lists with is_tokenized")
    is_tokenized: bool = False
    show_tokens: bool = Field(False, description="include tokens (server must run with --show-tokens-to-client)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: `result` is the raw little-endian array, with `dtype` and `shape`")
    dtype: Precision = Field("float32", description="quantized output as sentence-transformers defines it")


Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]


class TokenizeRequest(BaseModel):
    """What the model sees of each text."""
    input: str | list[Any] = Field(description="a string or a list of strings ('a ||| b' for a pair)")
    model: str | None = None
    input_type: str | None = Field(None, description="the model's prompt to put in front of each text")
    max_seq_len: int | None = Field(None, description="cut at this many tokens (default: the server's)")


class EmbeddingsRequest(EncodeOptions):
    """OpenAI's embeddings body."""
    input: str | list[Any] = Field(description="a string or a list of strings")
    model: str | None = None
    encoding_format: Literal["float", "base64", "int8", "uint8", "binary", "ubinary"] = Field(
        "float", description="float/base64 as OpenAI; int8, uint8, binary, ubinary: quantized integer lists")
    dtype: Precision | None = Field(None, description="quantized output with encoding_format base64")
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
        served = state.served(req.model)
        options, variant = _request_options(served.encoder, req)
        if req.dtype != "float32" and variant is not served.encoder.base:
            raise BadInput(f"dtype {req.dtype} is calibrated for the server's own pooling and layers; it cannot "
                           "be combined with per-request pooling, layers, normalize or max_seq_len")
        enc = await _encode(served, req.texts, req.is_tokenized, req.show_tokens, **options)
        vectors = await _quantized(served, enc.vectors, req.dtype)
        body: dict[str, Any] = {"id": req.id}
        if req.encoding_format == "base64":
            arr = np.ascontiguousarray(vectors.astype(vectors.dtype.newbyteorder("<")))
            body.update(result=base64.b64encode(arr.tobytes()).decode(), dtype=arr.dtype.name, shape=arr.shape)
        else:
            body["result"] = vectors
        if req.show_tokens:
            body["tokens"] = enc.tokens
        return await _json(body, vectors.size)

    @api.post("/v1/embeddings", summary="OpenAI embeddings")
    async def embeddings(req: EmbeddingsRequest) -> Response:
        texts = [req.input] if isinstance(req.input, str) else req.input
        first = texts[0] if texts else None
        if isinstance(first, int) or (isinstance(first, list) and first and isinstance(first[0], int)):
            raise BadInput("input as token ids is not supported here: send a string or a list of strings")
        served = state.served(req.model)
        options, variant = _request_options(served.encoder, req)
        if variant.config.pooling == "NONE":
            raise BadInput(("this server pools per token" if variant is served.encoder.base else "this request pools "
                            "per token") + " (pooling NONE), which gives no single vector per input; use POST /encode")
        dim = variant.dim
        if req.dimensions is not None and req.dimensions != dim:
            if req.dimensions > dim:
                raise BadInput(f"dimensions={req.dimensions} exceeds the model's {dim}")
            if not cfg.allow_dimensions:
                raise BadInput(f"model {served.name} was not trained for shortened vectors "
                               f"(Matryoshka); dimensions must be {dim} or left out "
                               "(start the server with --allow-dimensions to truncate anyway)")
        precision = req.dtype or (req.encoding_format if req.encoding_format not in ("float", "base64") else "float32")
        if precision != "float32" and req.dimensions is not None and req.dimensions < dim:
            raise BadInput(f"dimensions cannot be combined with quantized output ({precision}): the "
                           "calibration ranges belong to the full vector")
        if precision != "float32" and variant is not served.encoder.base:
            raise BadInput(f"encoding_format {precision} is calibrated for the server's own pooling and layers; "
                           "it cannot be combined with per-request pooling, layers, normalize or max_seq_len")
        enc = await _encode(served, texts, False, **options)
        vectors = enc.vectors.astype("<f4", copy=False)
        if req.dimensions is not None and req.dimensions < dim:
            vectors = vectors[:, :req.dimensions]
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1)
        vectors = await _quantized(served, vectors, precision)
        if req.encoding_format == "base64":
            rows = [base64.b64encode(np.ascontiguousarray(v).tobytes()).decode() for v in vectors]
        else:
            rows = vectors
        body = {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
                "model": served.name,
                "usage": {"prompt_tokens": enc.num_tokens, "total_tokens": enc.num_tokens}}
        return await _json(body, vectors.size)

    @api.get("/v1/models", summary="OpenAI model list")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": m.name, "object": "model", "created": int(state.started_at),
                                            "owned_by": "bertserve", "dim": m.encoder.dim,
                                            "prompts": m.encoder.prompts} for m in state.models]}

    @api.post("/tokenize", summary="the tokens, ids and character spans the model sees of each text")
    async def tokenize(req: TokenizeRequest) -> Response:
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise BadInput("input is empty: send at least one text")
        if len(texts) > cfg.max_request_texts:
            raise TooLarge(f"{len(texts)} texts in one request; this server accepts at most "
                           f"{cfg.max_request_texts} per request")
        served = state.served(req.model)
        prompt = _prompt_name(served.encoder, req.input_type)
        results = await to_thread.run_sync(
            lambda: served.encoder.explain_tokens(texts, prompt=prompt, max_seq_len=req.max_seq_len))
        body = {"object": "list", "model": served.name,
                "data": [{"object": "tokens", "index": i, **r} for i, r in enumerate(results)]}
        return await _json(body, sum(r["num_tokens"] for r in results) * 4)

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


async def _encode(served, texts, is_tokenized, show_tokens=False, **options):
    return await asyncio.wrap_future(served.batcher.submit(texts, is_tokenized=is_tokenized, show_tokens=show_tokens,
                                                          **options))


# what other embedding APIs call the e5 prompts (Cohere's search_document, Voyage's document, ...)
_INPUT_TYPE_ALIASES = {"document": "passage", "search_document": "passage", "search_query": "query"}


def _prompt_name(encoder, input_type: str | None) -> str | None:
    """The model's prompt an `input_type` names (checked now, so a bad one is a 400 before any work)."""
    if input_type is None:
        return None
    prompts = getattr(encoder, "prompts", {})
    name = input_type if input_type in prompts or input_type == "" else _INPUT_TYPE_ALIASES.get(input_type, input_type)
    encoder.with_prompt([], name)  # raises BadInput naming the model's prompts
    return name


def _request_options(encoder, req: EncodeOptions) -> tuple[dict, object]:
    """The encode engine's prepare options for this request (its prompt, its own pooling, layers, ...) and the
    variant they make, both checked now so a bad one is a 400 before the request is queued."""
    if req.input_type is not None and req.prompt is not None and req.input_type != req.prompt:
        raise BadInput("input_type and prompt name the same thing; give one")
    options = {k: getattr(req, k) for k in ("pooling", "layers", "normalize", "max_seq_len", "long_text")
               if getattr(req, k) is not None}
    variant = encoder.variant(**options)
    prompt = _prompt_name(encoder, req.input_type if req.input_type is not None else req.prompt)
    if prompt is not None:
        options["prompt"] = prompt
    return options, variant


async def _quantized(served, vectors: np.ndarray, precision: str) -> np.ndarray:
    """Vectors in the asked precision; the first int8/uint8 request calibrates (off the event loop)."""
    if precision == "float32":
        return vectors
    return await to_thread.run_sync(served.encoder.quantize, vectors, precision)


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


# the client chooses the method: any other word would be a new metrics series per request, for ever
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
            method = scope["method"] if scope["method"] in HTTP_METHODS else "OTHER"
            self.metrics.observe_request("http", f"{method} {endpoint}", time.perf_counter() - t0)
