"""MilvusCollection: the Collection contract on Milvus, for data that outgrows one machine.

The same client code talks to Milvus Lite (a local file URI such as "data/news.db", embedded; needs the
`milvus-lite` package) or a Milvus server or cluster ("http://host:19530"). Items live in one Milvus
collection with an explicit schema (Milvus's quick setup ignores the index type asked for):

    id        VARCHAR primary key (the user's id)
    vector    FLOAT_VECTOR(dim), with an explicit index (FLAT, HNSW, IVF_FLAT, ...)
    text      VARCHAR, nullable
    metadata  JSON
    sparse    SPARSE_FLOAT_VECTOR made from `text` by Milvus's BM25 function (full-text search), when the
              collection was created with bm25 (Milvus 2.5 and later, and Milvus Lite 3, offer it)

bertserve's own settings (metric, encoder config) are kept as a collection property so `open` can
rebuild the encoder. Filters use the Collection's filter language, rendered as a Milvus expression.
"""
from __future__ import annotations

import json
import math

import numpy as np

from bertserve.errors import AlreadyExists, BadInput, Conflict, MissingFile, NotFound, Unavailable
from bertserve.search import fusion as fusions
from bertserve.search.collection import Hit, Item
from bertserve.search.embed import Embedder, VectorInput
from bertserve.search.filters import COMPARE, FilterError, walk
from bertserve.search.inputs import MAX_K, check_dim, check_ids, check_metadata, check_texts, clamp_k, prepare_add

CONFIG_PROPERTY = "bertserve.config"
FORMAT_VERSION = 1
METRICS = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
INDEXES = {"FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ"}
ID_MAX = 512
TEXT_MAX = 65535  # Milvus's VARCHAR limit, in UTF-8 bytes
DIM_MAX = 32768  # Milvus's limit on FLOAT_VECTOR dimensions
TOPK_MAX = 16384  # Milvus's limit on the hits of one search


def _client(uri: str):
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise ImportError("MilvusCollection needs pymilvus (and milvus-lite for a local file): "
                          "pip install 'bertserve[milvus]'") from None
    return MilvusClient(uri)


class MilvusCollection(VectorInput):
    """Open with `MilvusCollection.create(uri, name, ...)` or `.open(uri, name)`; not via the constructor."""

    max_k = MAX_K  # most hits one search returns; a larger k is cut to it

    def __init__(self, client, uri: str, name: str, dim: int, config: dict, encoder=None):
        self.client, self.uri, self.name, self.dim = client, uri, name, dim
        self.metric: str = config["metric"]
        self.params: dict = config.get("params") or {}
        self.embedder = Embedder(encoder, config.get("encoder"))
        self.bm25: dict | None = config.get("bm25")

    # ---- creating and opening ----------------------------------------------------------------------
    @classmethod
    def create(cls, uri: str, name: str, dim: int | None = None, encoder=None, metric: str = "cosine",
               index: str = "FLAT", index_params: dict | None = None,
               params: dict | None = None, bm25="standard") -> "MilvusCollection":
        """A new collection. `index_params` build the index (HNSW: M, efConstruction; IVF: nlist);
        `params` are default search parameters (HNSW: ef; IVF: nprobe). `bm25`: a preset of
        MILVUS_ANALYZERS, a dict of Milvus analyzer params, or False for no full-text search."""
        from pymilvus import DataType, MilvusClient

        _check_name(name)
        if metric not in METRICS:
            raise BadInput(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
        if index not in INDEXES:
            raise BadInput(f"index must be one of {sorted(INDEXES)}, got {index!r}")
        embedder = Embedder(encoder, None)
        if dim is None:
            if encoder is None:
                raise BadInput("give an encoder or dim= to create a collection")
            dim = embedder.dim()
        dim = check_dim(dim, DIM_MAX)
        analyzer = milvus_analyzer(bm25)
        client = _client(uri)
        try:
            if client.has_collection(name):
                raise AlreadyExists(f"a collection {name!r} already exists at {uri}")
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            text_options = {"enable_analyzer": True, "analyzer_params": analyzer} if analyzer else {}
            schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX, nullable=True, **text_options)
            schema.add_field("metadata", DataType.JSON)
            spec = client.prepare_index_params()
            spec.add_index(field_name="vector", index_type=index, metric_type=METRICS[metric],
                           params=dict(index_params or {}))
            if analyzer:
                _add_bm25(schema, spec)
            config = {"format_version": FORMAT_VERSION, "metric": metric, "params": dict(params or {}),
                      "encoder": embedder.config(), "bm25": {"analyzer": analyzer} if analyzer else None}
            # Strong consistency: an acknowledged add is visible to the next search, as in Collection
            try:
                client.create_collection(name, schema=schema, index_params=spec, consistency_level="Strong",
                                         properties={CONFIG_PROPERTY: json.dumps(config)})
            except Exception as exc:
                if analyzer and any(w in str(exc).lower() for w in ("bm25", "function", "analyzer", "sparse",
                                                                     "tokenizer")):
                    raise Unavailable(f"this Milvus at {uri} does not offer BM25 full-text search with analyzer "
                                      f"{analyzer} ({exc}); it needs Milvus 2.5 or later (or Milvus Lite 3). "
                                      "Create the collection with bm25=False for vectors only") from None
                raise
        except BaseException:
            client.close()
            raise
        return cls(client, uri, name, dim, config, encoder)

    @staticmethod
    def exists(uri: str, name: str) -> bool:
        _check_name(name)
        client = _client(uri)
        try:
            return client.has_collection(name)
        finally:
            client.close()

    @classmethod
    def open(cls, uri: str, name: str, encoder=None) -> "MilvusCollection":
        _check_name(name)
        client = _client(uri)
        try:
            if not client.has_collection(name):
                raise MissingFile(f"no collection {name!r} at {uri}")
            desc = client.describe_collection(name)
            raw = (desc.get("properties") or {}).get(CONFIG_PROPERTY)
            if raw is None:
                raise BadInput(f"Milvus collection {name!r} at {uri} was not created by bertserve")
            config = json.loads(raw)
            if config.get("format_version") != FORMAT_VERSION:
                raise BadInput(f"collection {name!r} has format version {config.get('format_version')}; "
                                 f"this bertserve reads {FORMAT_VERSION}")
            dim = next(f["params"]["dim"] for f in desc["fields"] if f["name"] == "vector")
            client.load_collection(name)
        except BaseException:
            client.close()
            raise
        return cls(client, uri, name, int(dim), config, encoder)

    def close(self):
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- writing -----------------------------------------------------------------------------------
    def add(self, texts=None, ids=None, metadata=None, vectors=None) -> list[str]:
        """Add items; visible to searches once this returns. Ids already present are refused."""
        ids, texts, metas, vectors = prepare_add(self, texts, ids, metadata, vectors)
        rows = self._rows(ids, texts, metas, vectors)
        present = self._existing(ids)  # Milvus itself would keep both rows under one primary key
        if present:
            raise BadInput(f"ids already in the collection: {sorted(present)[:10]}")
        self._open().insert(self.name, rows)
        return ids

    def delete(self, ids) -> int:
        """Delete items by id; ids not in the collection are ignored. Returns how many were deleted."""
        present = self._existing(check_ids(ids, None))
        if present:
            self._open().delete(self.name, ids=sorted(present))
        return len(present)

    def update(self, ids, texts=None, vectors=None, metadata=None) -> None:
        """Replace texts/vectors and/or metadata of existing items (all ids must exist)."""
        ids = check_ids(ids, None)
        n = len(ids)
        if texts is None and vectors is None and metadata is None:
            raise BadInput("update needs texts, vectors or metadata")
        old = {item.id: item for item in self.get(ids) if item is not None}
        missing = [i for i in ids if i not in old]
        if missing:
            raise NotFound(f"ids not in the collection: {missing[:10]}")
        new_texts = check_texts(texts, n)
        if texts is None and vectors is None:
            new_vectors = np.stack([old[i].vector for i in ids])
        else:
            new_vectors = self._vectors_for(new_texts, vectors)
        if new_texts is None:
            new_texts = [old[i].text for i in ids]
        metas = check_metadata(metadata if metadata is not None else [old[i].metadata for i in ids], n)
        self._open().upsert(self.name, self._rows(ids, new_texts, metas, new_vectors))

    # ---- reading -----------------------------------------------------------------------------------
    def search(self, query, k: int = 10, filter: dict | None = None, params: dict | None = None,
               include_text: bool = True, include_metadata: bool = True, mode: str = "dense",
               fusion: str = "rrf", rrf_k: float = fusions.RRF_K, weights: dict | None = None,
               window: int | None = None):
        """Nearest items to a text, a vector, or a batch of either; same answers as Collection.search.

        mode "bm25" runs Milvus's full-text search (BM25 scores as Milvus computes them); "hybrid" fuses
        it with the dense answer here, exactly as Collection does, so each part's score comes back."""
        part_weights = fusions.check_search_mode(mode, fusion, rrf_k, weights)
        k = clamp_k(k, TOPK_MAX, min(self.max_k, TOPK_MAX))  # Milvus itself stops at the collection's size
        if mode != "dense":
            return self._search_keywords(query, k, filter, params, include_text, include_metadata, mode,
                                         fusion, rrf_k, part_weights, window)
        single, queries = self._queries(query)
        expr = compile_milvus(filter) if filter is not None else ""
        fields = [f for f, on in (("text", include_text), ("metadata", include_metadata)) if on]
        if params is not None and not isinstance(params, dict):
            raise BadInput("params must be an object such as {\"ef\": 64} or {\"nprobe\": 16}")
        found = self._open().search(self.name, data=queries.tolist(), limit=int(k), filter=expr,
                                    output_fields=fields or ["id"],
                                    search_params={"metric_type": METRICS[self.metric],
                                                   "params": {**self.params, **(params or {})}})
        out = [[Hit(h["id"], float(h["distance"]), h["entity"].get("text") if include_text else None,
                    h["entity"].get("metadata") if include_metadata else None) for h in row] for row in found]
        return out[0] if single else out

    def _search_keywords(self, query, k, filter, params, include_text, include_metadata, mode, fusion,
                         rrf_k, weights, window):
        k = clamp_k(k, TOPK_MAX, min(self.max_k, TOPK_MAX))
        single, texts = fusions.text_queries(query, mode)
        if not self.bm25:
            raise Conflict(f"Milvus collection {self.name!r} was created without BM25 full-text search "
                           "(bm25=False, or by a bertserve without it); only mode 'dense' is available")
        window = fusions.check_window(window, k)
        expr = compile_milvus(filter) if filter is not None else ""
        fields = [f for f, on in (("text", include_text), ("metadata", include_metadata)) if on]
        depth = window if mode == "hybrid" else int(k)
        keyword = self._open().search(self.name, data=list(texts), anns_field="sparse", limit=depth, filter=expr,
                                      output_fields=fields or ["id"], search_params={"metric_type": "BM25"})
        entities = {h["id"]: h["entity"] for row in keyword for h in row}
        for row in keyword:
            for h in row:  # Milvus Lite reports BM25 negated (a distance: lower is better); servers as is
                h["distance"] = abs(float(h["distance"]))
        if mode == "bm25":
            out = [[Hit(h["id"], h["distance"], h["entity"].get("text") if include_text else None,
                        h["entity"].get("metadata") if include_metadata else None,
                        {"bm25": h["distance"], "bm25_rank": r + 1}) for r, h in enumerate(row)]
                   for row in keyword]
            return out[0] if single else out
        dense = self.search(list(texts), k=window, filter=filter, params=params, include_text=include_text,
                            include_metadata=include_metadata)
        out = []
        for d_hits, k_hits in zip(dense, keyword):
            for h in d_hits:
                entities.setdefault(h.id, {"text": h.text, "metadata": h.metadata})
            # fusion works on integer ids: number this query's candidates
            names = list(dict.fromkeys([h.id for h in d_hits] + [h["id"] for h in k_hits]))
            num = {n: i for i, n in enumerate(names)}
            lists = {"dense": fusions.Ranked(np.array([num[h.id] for h in d_hits], np.int64),
                                             np.array([h.score for h in d_hits]), self.metric != "l2"),
                     "bm25": fusions.Ranked(np.array([num[h["id"]] for h in k_hits], np.int64),
                                            np.array([h["distance"] for h in k_hits]))}
            fused = fusions.fuse(lists, int(k), fusion, weights, rrf_k)
            row = []
            for i, score, part in zip(fused.iids.tolist(), fused.scores.tolist(), fused.parts):
                ent = entities[names[i]]
                row.append(Hit(names[i], score, ent.get("text") if include_text else None,
                               ent.get("metadata") if include_metadata else None, part))
            out.append(row)
        return out[0] if single else out

    def get(self, ids) -> list[Item | None]:
        """Items for the given ids, in order; None where an id is not in the collection."""
        ids = check_ids(ids, None, unique=False)
        rows = self._open().get(self.name, ids=list(dict.fromkeys(ids)),
                                output_fields=["text", "metadata", "vector"]) if ids else []
        by_id = {r["id"]: Item(r["id"], r.get("text"), r.get("metadata") or {},
                               np.asarray(r["vector"], dtype=np.float32)) for r in rows}
        return [by_id.get(i) for i in ids]

    def has(self, ids) -> list[bool]:
        ids = check_ids(ids, None, unique=False)
        present = self._existing(ids)
        return [i in present for i in ids]

    def __contains__(self, item_id) -> bool:
        return self.has([item_id])[0]

    def __len__(self) -> int:
        rows = self._open().query(self.name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def stats(self) -> dict:
        index = self._open().describe_index(self.name, "vector")
        return {"name": self.name, "uri": self.uri, "engine": "milvus", "count": len(self), "dim": self.dim,
                "metric": self.metric, "index": index.get("index_type"), "params": self.params,
                "format_version": FORMAT_VERSION, "bm25": self.bm25}

    # ---- internals -----------------------------------------------------------------------------------
    def _open(self):
        if self.client is None:
            raise BadInput(f"collection {self.name!r} at {self.uri} is closed")
        return self.client

    def _existing(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        rows = self._open().query(self.name, filter=f"id in {_list(list(dict.fromkeys(ids)))}",
                                  output_fields=["id"])
        return {r["id"] for r in rows}

    @staticmethod
    def _rows(ids, texts, metas: list[str], vectors: np.ndarray) -> list[dict]:
        for i in ids:
            if len(i.encode()) > ID_MAX:
                raise BadInput(f"ids are limited to {ID_MAX} UTF-8 bytes in Milvus: {i[:40]!r}...")
        for t in texts or ():
            if t is not None and len(t.encode()) > TEXT_MAX:
                raise BadInput(f"texts are limited to {TEXT_MAX} UTF-8 bytes in Milvus: {t[:40]!r}...")
        texts = texts if texts is not None else [None] * len(ids)
        return [{"id": i, "vector": v, "text": t, "metadata": json.loads(m)}
                for i, t, m, v in zip(ids, texts, metas, vectors.tolist())]


# bertserve's analyzer presets in Milvus's analyzer language: its "standard" tokenizer splits words by
# Unicode rules (Chinese per character), "jieba" segments Chinese words; stop words and stemmer filters.
_ENGLISH_FILTERS = ["lowercase", {"type": "stemmer", "language": "english"},
                    {"type": "stop", "stop_words": ["_english_"]}]
MILVUS_ANALYZERS = {
    "standard": {"tokenizer": "jieba", "filter": _ENGLISH_FILTERS},
    "english": {"tokenizer": "standard", "filter": _ENGLISH_FILTERS},
    "chinese": {"tokenizer": "jieba", "filter": ["lowercase"]},
    "chinese-jieba": {"tokenizer": "jieba", "filter": ["lowercase"]},
}


def milvus_analyzer(spec) -> dict | None:
    """Milvus analyzer params for create's `bm25=`: a preset name, True (standard), a dict of Milvus
    analyzer params (passed through), or False/None (no full-text search)."""
    if spec is None or spec is False:
        return None
    if spec is True:
        spec = "standard"
    if isinstance(spec, str):
        if spec not in MILVUS_ANALYZERS:
            raise BadInput(f"bm25 analyzer must be one of {sorted(MILVUS_ANALYZERS)} or a dict of Milvus "
                           f"analyzer params, got {spec!r}")
        return MILVUS_ANALYZERS[spec]
    if isinstance(spec, dict):
        return dict(spec)
    raise BadInput(f"bm25 must be a preset name, a dict or False, got {type(spec).__name__}")


def _add_bm25(schema, spec):
    from pymilvus import DataType, Function, FunctionType

    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                 output_field_names=["sparse"]))
    spec.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")


def _check_name(name):
    # Milvus's own rule for collection names; checked here for a clear message before any connection
    if not isinstance(name, str) or not name or len(name) > 255 or not (name[0].isalpha() or name[0] == "_") \
            or not all(c.isascii() and (c.isalnum() or c == "_") for c in name):
        raise BadInput(f"a Milvus collection name is letters, digits and _ (not first: a digit), got {name!r}")


# ---- filters as Milvus expressions ----------------------------------------------------------------------
def compile_milvus(query) -> str:
    """The Collection filter language (validated by filters.walk) as a Milvus boolean expression."""
    return walk(query, MilvusExpr())


class MilvusExpr:
    """Renders filter leaves over the JSON `metadata` field with escaped literals.

    Milvus has three-valued logic (a missing key compares as unknown, and `not unknown` is unknown), so
    every leaf is guarded with `exists` to be plainly true or false; then `$ne`, `$nin` and `$nor` match
    items that lack the field, as in Collection.
    """
    true, false = "true", "false"

    @staticmethod
    def path(segments: list[str]) -> str:
        return "metadata" + "".join(f"[{_literal(seg)}]" for seg in segments)

    @staticmethod
    def all(parts: list[str]) -> str:
        return "(" + " and ".join(parts) + ")"

    @staticmethod
    def any(parts: list[str]) -> str:
        return "(" + " or ".join(parts) + ")"

    @staticmethod
    def negate(part: str) -> str:
        return f"(not {part})"

    @staticmethod
    def exists(path: str, present: bool) -> str:
        return f"(exists {path})" if present else f"(not exists {path})"

    @staticmethod
    def compare(path: str, op: str, value) -> str:
        return f"(exists {path} and {path} {COMPARE[op]} {_literal(value)})"

    @staticmethod
    def eq(path: str, value) -> str:
        if value is None:  # null matches a missing field or an explicit null, as in Collection
            return f"(not exists {path})"
        return f"(exists {path} and {path} == {_literal(value)})"


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _literal(value) -> str:
    """A Milvus literal for a validated scalar: strings quoted and escaped, never pasted raw."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"value must be a finite number, got {value!r}")
        return repr(value)
    if isinstance(value, str):
        bad = [c for c in value if ord(c) < 32 and c not in _ESCAPES]
        if bad:
            raise FilterError(f"control character {bad[0]!r} cannot appear in a Milvus filter string")
        return '"' + "".join(_ESCAPES.get(c, c) for c in value) + '"'
    raise FilterError(f"cannot use {type(value).__name__} in a Milvus filter")


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_literal(v) for v in values) + "]"
