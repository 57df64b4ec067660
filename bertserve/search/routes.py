"""HTTP routes for collections under /collections: a translation of requests into Collection calls.

Errors are bertserve.errors classes, answered by the app's handlers (bertserve.serve.errors) like every
other route's. Query and document texts are embedded by the encoder the server passes in, so they go
through its batcher.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from bertserve.errors import AlreadyExists, BadInput, NotFound
from bertserve.search.collection import CONFIG, Collection, _lock_folder

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateBody(Body):
    name: str
    dim: int | None = None
    index: str = "auto"
    metric: str = "cosine"
    params: dict[str, Any] = Field(default_factory=dict)
    memory_budget: int | None = None
    bm25: bool | str | dict[str, Any] = "standard"  # the keyword index's analyzer; false: vectors only


class ItemsBody(Body):
    ids: list[str] | None = None
    texts: list[str] | None = None
    vectors: list[list[float]] | None = None
    metadata: list[dict[str, Any]] | None = None


class SearchBody(Body):
    query: str | list[str] | None = None
    vector: list[float] | list[list[float]] | None = None
    k: int = 10
    filter: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    include_text: bool = True
    include_metadata: bool = True
    mode: str = "dense"
    fusion: str = "rrf"
    rrf_k: float = 60
    weights: dict[str, float] | None = None
    window: int | None = None


class IdsBody(Body):
    ids: list[str]
    include_vectors: bool = False


class Registry:
    """Open collections by name, confined to one data folder."""

    def __init__(self, data_dir, embed, max_k: int | None = None):
        self.root = Path(data_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.embed = embed
        self.max_k = max_k
        self.open: dict[str, Collection] = {}
        self.lock = threading.Lock()

    def path(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
            raise BadInput(f"invalid collection name {name!r}: use letters, digits, '.', '_' or '-' "
                       "(at most 100), starting with a letter or digit")
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise BadInput(f"collection name {name!r} leaves the data folder")
        return path

    def get(self, name: str) -> Collection:
        path = self.path(name)
        with self.lock:
            if name not in self.open:
                if not (path / CONFIG).exists():
                    raise NotFound(f"no collection named {name!r}")
                self.open[name] = self._limited(Collection.open(path, encoder=self.embed))
            return self.open[name]

    def _limited(self, col: Collection) -> Collection:
        if self.max_k is not None:
            col.max_k = self.max_k
        return col

    def create(self, body: CreateBody) -> Collection:
        path = self.path(body.name)
        with self.lock:
            if (path / CONFIG).exists():
                raise AlreadyExists(f"collection {body.name!r} already exists")
            if body.dim is None and self.embed is None:
                raise BadInput("give dim: this server has no encoder")
            col = Collection.create(path, encoder=self.embed, dim=body.dim, index=body.index, metric=body.metric,
                                    params=body.params, memory_budget=body.memory_budget, bm25=body.bm25)
            self.open[body.name] = self._limited(col)
            return col

    def drop(self, name: str):
        """Delete a collection's folder, also one too damaged to open (never one open elsewhere)."""
        path = self.path(name)
        with self.lock:
            if name not in self.names():
                raise NotFound(f"no collection named {name!r}")
            col = self.open.pop(name, None)
            if col is not None:
                col.close()
            held = _lock_folder(path)  # Conflict while another process has it open
            try:
                shutil.rmtree(path)
            finally:
                os.close(held)

    def names(self) -> list[str]:
        """Every collection folder, including damaged or half-made ones (so they can be seen and dropped)."""
        return sorted(p.name for p in self.root.iterdir()
                      if NAME.fullmatch(p.name) and any((p / f).exists() for f in (CONFIG, "store.sqlite")))

    def listing(self) -> list[dict]:
        out = []
        for name in self.names():
            if not (self.root / name / CONFIG).exists():
                out.append({"name": name, "damaged": True, "error": f"half-made: it has no {CONFIG}"})
                continue
            try:
                out.append(self.get(name).stats())
            except Exception as exc:  # one bad folder must not hide the others
                out.append({"name": name, "damaged": True, "error": _reason(exc)})
        return out

    def close(self):
        with self.lock:
            for col in self.open.values():
                col.close()
            self.open.clear()


def _reason(exc: Exception) -> str:
    return f"cannot be opened: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}"


def _hit(h) -> dict:
    out = {"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata}
    if h.scores is not None:
        out["scores"] = h.scores
    return out


def make_router(data_dir, encoder_or_embed_fn=None, max_k: int | None = None) -> APIRouter:
    """Routes for collections stored under `data_dir`; texts are embedded with the given Encoder or
    `embed(texts) -> ndarray` callable; `max_k` bounds the hits of one search (default
    Collection.max_k). `router.registry.close()` saves and closes them at shutdown."""
    reg = Registry(data_dir, encoder_or_embed_fn, max_k)
    router = APIRouter(prefix="/collections", tags=["collections"])
    router.registry = reg

    @router.post("", status_code=201)
    def create(body: CreateBody):
        return reg.create(body).stats()

    @router.get("")
    def list_collections():
        return {"collections": reg.listing()}

    @router.get("/{name}")
    def stats(name: str):
        return reg.get(name).stats()

    @router.delete("/{name}")
    def drop(name: str):
        reg.drop(name)
        return {"deleted": name}

    @router.post("/{name}/add")
    def add(name: str, body: ItemsBody):
        ids = reg.get(name).add(texts=body.texts, ids=body.ids, metadata=body.metadata, vectors=body.vectors)
        return {"ids": ids, "count": len(ids)}

    @router.post("/{name}/update")
    def update(name: str, body: ItemsBody):
        if body.ids is None:
            raise BadInput("update needs ids")
        reg.get(name).update(body.ids, texts=body.texts, vectors=body.vectors, metadata=body.metadata)
        return {"updated": len(body.ids)}

    @router.post("/{name}/search")
    def search(name: str, body: SearchBody):
        if (body.query is None) == (body.vector is None):
            raise BadInput("give exactly one of query (text) or vector")
        query = body.query if body.query is not None else body.vector
        if isinstance(query, list) and not query:
            raise BadInput("query list is empty")
        hits = reg.get(name).search(query, k=body.k, filter=body.filter, params=body.params,
                                    include_text=body.include_text, include_metadata=body.include_metadata,
                                    mode=body.mode, fusion=body.fusion, rrf_k=body.rrf_k, weights=body.weights,
                                    window=body.window)
        batch = isinstance(query, list) and (body.query is not None or isinstance(query[0], list))
        if batch:
            return {"results": [[_hit(h) for h in row] for row in hits]}
        return {"hits": [_hit(h) for h in hits]}

    @router.post("/{name}/get")
    def get(name: str, body: IdsBody):
        items = reg.get(name).get(body.ids)
        found = [{"id": it.id, "text": it.text, "metadata": it.metadata,
                  **({"vector": it.vector.tolist()} if body.include_vectors else {})}
                 for it in items if it is not None]
        return {"items": found, "missing": [i for i, it in zip(body.ids, items) if it is None]}

    @router.post("/{name}/delete")
    def delete(name: str, body: IdsBody):
        return {"deleted": reg.get(name).delete(body.ids)}

    return router
