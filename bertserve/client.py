"""Python client of the bertserve HTTP API: `Client(url).encode(texts)` -> ndarray, and `AsyncClient`.

Vectors travel as base64 of the raw array (the /encode `encoding_format` option), which is exact and much
cheaper to produce and parse than JSON floats. Large lists go in chunks; connection failures and the
server's "busy" answers (429, 503) are retried with backoff; other errors raise at once.
"""
from __future__ import annotations

import asyncio
import base64
import time

import httpx
import numpy as np

from bertserve.errors import BadInput, BadInputType

RETRY_STATUS = (429, 503)
RETRY_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
                httpx.PoolTimeout)


class ServerError(RuntimeError):
    """The server answered with an error: `.status` (HTTP code), `.type` and the server's message."""

    def __init__(self, status: int, type_: str, message: str):
        super().__init__(f"{status} {type_}: {message}")
        self.status, self.type, self.message = status, type_, message


class BadRequest(ServerError, ValueError):
    """The server refused the input itself (4xx other than 429)."""


class _Base:
    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.25, chunk_size: int = 256):
        if chunk_size < 1:
            raise BadInput(f"chunk_size must be >= 1, got {chunk_size}")
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.chunk_size = retries, backoff, chunk_size
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout

    def _chunks(self, texts, is_tokenized):
        if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
            raise BadInputType(f"texts must be a list of {'token lists' if is_tokenized else 'strings'}, "
                            f"got {type(texts).__name__}")
        if not texts:
            raise BadInput("texts is empty")
        texts = [list(t) for t in texts] if is_tokenized else list(texts)
        return [texts[i:i + self.chunk_size] for i in range(0, len(texts), self.chunk_size)]

    @staticmethod
    def _body(chunk, is_tokenized):
        return {"texts": chunk, "is_tokenized": is_tokenized, "encoding_format": "base64"}

    def _delay(self, attempt: int) -> float:
        return self.backoff * (2 ** attempt)

    def _settle(self, attempt, response=None, error=None):
        """The decoded answer, or None to retry after `_delay(attempt)`; raises what the caller should see."""
        if response is not None and response.status_code < 400:
            return response.json()
        failure = self._failed(attempt, error, response)
        if failure is not None:
            raise failure from error
        return None

    def _failed(self, attempt, error=None, response=None):
        """None to retry, else the exception to raise."""
        if response is not None:
            if response.status_code in RETRY_STATUS and attempt < self.retries:
                return None
            return _error_of(response)
        if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.PoolTimeout):
            return TimeoutError(f"no answer from {self.url} within {self._timeout} s")
        if not isinstance(error, RETRY_ERRORS):
            return error
        if attempt < self.retries:
            return None
        return ConnectionError(f"cannot reach {self.url} after {self.retries + 1} attempts: {error}")


def _error_of(response: httpx.Response) -> ServerError:
    try:
        err = response.json()["error"]
        type_, message = err.get("type", "error"), err.get("message", response.text)
    except (ValueError, KeyError, TypeError, AttributeError):
        type_, message = "error", response.text[:500]
    cls = BadRequest if 400 <= response.status_code < 500 and response.status_code != 429 else ServerError
    return cls(response.status_code, type_, message)


def _decode(payload: dict) -> np.ndarray:
    raw = base64.b64decode(payload["result"])
    return np.frombuffer(raw, dtype=np.dtype(payload["dtype"]).newbyteorder("<")).reshape(payload["shape"])


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    if parts[0].ndim == 3:
        # token vectors (pooling NONE): chunks may be padded to different lengths
        width = max(p.shape[1] for p in parts)
        parts = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in parts]
    return np.concatenate(parts).astype(parts[0].dtype.newbyteorder("="), copy=False)


def _progress(total: int, show: bool | None, n_chunks: int):
    if show is False or (show is None and n_chunks < 4):
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="text", desc="encode")


class Client(_Base):
    """Blocking client. Thread-safe: one Client may be shared by threads (httpx pools the connections)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", **options):
        super().__init__(url, **options)
        self._http = httpx.Client(base_url=self.url, timeout=self._timeout, headers=self._headers)

    def encode(self, texts, *, is_tokenized: bool = False, show_progress: bool | None = None) -> np.ndarray:
        """Vectors of `texts` in order; float32 (n, dim), or (n, L, dim) when the server pools NONE."""
        chunks = self._chunks(texts, is_tokenized)
        bar = _progress(sum(map(len, chunks)), show_progress, len(chunks))
        parts = []
        try:
            for chunk in chunks:
                parts.append(_decode(self._request("POST", "/encode", self._body(chunk, is_tokenized))))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return _concat(parts)

    def ner(self, texts) -> list[list[dict]]:
        """Named entities per text (`serve --ner DIR`): {"text", "label", "start", "end", "score"} with
        character offsets into the text as sent."""
        out = []
        for chunk in self._chunks(texts, False):
            out += self._request("POST", "/ner", {"texts": chunk})["results"]
        return out

    def summarize(self, text: str, **options) -> dict:
        """POST /summarize: {"summary", "sentences": [{index, text, start, end, score}], ...}; options as
        the route's (num_sentences, ratio, max_chars, method, diversity, position)."""
        return self._request("POST", "/summarize", {"text": text, **options})

    def keywords(self, text: str, **options) -> list[dict]:
        """POST /keywords: [{text, score, count}], best first; options top_n, diversity, max_ngram."""
        return self._request("POST", "/keywords", {"text": text, **options})["keywords"]

    def status(self) -> dict:
        return self._request("GET", "/status")

    def health(self) -> bool:
        try:
            return self._http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def _request(self, method, path, body=None) -> dict:
        for attempt in range(self.retries + 1):  # the last attempt returns or raises
            try:
                answer = self._settle(attempt, response=self._http.request(method, path, json=body))
            except httpx.HTTPError as e:
                answer = self._settle(attempt, error=e)
            if answer is not None:
                return answer
            time.sleep(self._delay(attempt))

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_Base):
    """asyncio client; `encode` sends up to `concurrency` chunks at once."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, concurrency: int = 4, **options):
        super().__init__(url, **options)
        self.concurrency = concurrency
        self._http = httpx.AsyncClient(base_url=self.url, timeout=self._timeout, headers=self._headers)

    async def encode(self, texts, *, is_tokenized: bool = False, show_progress: bool | None = None) -> np.ndarray:
        chunks = self._chunks(texts, is_tokenized)
        bar = _progress(sum(map(len, chunks)), show_progress, len(chunks))
        gate = asyncio.Semaphore(self.concurrency)

        async def one(chunk):
            async with gate:
                out = _decode(await self._request("POST", "/encode", self._body(chunk, is_tokenized)))
            if bar is not None:
                bar.update(len(chunk))
            return out
        try:
            parts = await asyncio.gather(*(one(c) for c in chunks))
        finally:
            if bar is not None:
                bar.close()
        return _concat(list(parts))

    async def summarize(self, text: str, **options) -> dict:
        return await self._request("POST", "/summarize", {"text": text, **options})

    async def keywords(self, text: str, **options) -> list[dict]:
        return (await self._request("POST", "/keywords", {"text": text, **options}))["keywords"]

    async def status(self) -> dict:
        return await self._request("GET", "/status")

    async def _request(self, method, path, body=None) -> dict:
        for attempt in range(self.retries + 1):
            try:
                answer = self._settle(attempt, response=await self._http.request(method, path, json=body))
            except httpx.HTTPError as e:
                answer = self._settle(attempt, error=e)
            if answer is not None:
                return answer
            await asyncio.sleep(self._delay(attempt))

    async def aclose(self):
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()
