"""`bertserve index`, `bertserve search` and `bertserve cluster`: collections from the command line."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

from bertserve.encode.cli import add_encoder_arguments, encoder_config_from_args
from bertserve.errors import BadInput

INDEX_BATCH = 256
MILVUS_HELP = ("use the Milvus collection named by the collection argument at this URI "
               "(a Milvus Lite file such as data/news.db, or http://host:19530)")


def read_records(path: str, fmt: str, id_field: str, text_field: str):
    """Yield (id, text, metadata) from JSON lines, CSV or plain lines. Without an id field an item's
    id is its record number, so re-running the same file resumes instead of duplicating."""
    if fmt == "auto":
        fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(Path(path).suffix.lower(), "lines")
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "lines":
            for n, line in enumerate(f):
                if line.strip():
                    yield str(n), line.rstrip("\r\n"), {}
            return
        rows = csv.DictReader(f) if fmt == "csv" else (_json_line(line, n) for n, line in enumerate(f) if line.strip())
        for n, row in enumerate(rows):
            if text_field not in row or not isinstance(row[text_field], str):
                raise BadInput(f"record {n + 1} of {path} has no text field {text_field!r}")
            item_id = str(row[id_field]) if row.get(id_field) not in (None, "") else str(n)
            meta = {k: v for k, v in row.items() if k not in (id_field, text_field)}
            yield item_id, row[text_field], meta


def _json_line(line: str, n: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadInput(f"line {n + 1} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadInput(f"line {n + 1} is nested too deeply") from None
    if not isinstance(row, dict):
        raise BadInput(f"line {n + 1} is not a JSON object")
    return row


def _given_encoder_options(args) -> dict:
    """The encoder options set on this command line: those that differ from the flags' own defaults."""
    defaults = argparse.ArgumentParser()
    add_encoder_arguments(defaults)
    given, default = encoder_config_from_args(args), encoder_config_from_args(defaults.parse_args([]))
    return {f.name: getattr(given, f.name) for f in dataclasses.fields(given)
            if getattr(given, f.name) != getattr(default, f.name)}


def _saved_encoder_config(args) -> dict | None:
    config = Path(args.collection) / "collection.json"
    if args.milvus or not config.is_file():
        return None
    return json.loads(config.read_text()).get("encoder")


def _encoder(args, required: bool):
    """The encoder the command line asks for; None for an existing collection given no encoder option, which
    then rebuilds the encoder it was made with. Options given without --model adjust that saved encoder (so
    `--pooling` is never silently dropped: the collection refuses an encoder that does not match it)."""
    from bertserve.encode import Encoder, EncoderConfig

    if required or args.model is not None:
        return Encoder(config=encoder_config_from_args(args))
    given = _given_encoder_options(args)
    if not given:
        return None
    saved = _saved_encoder_config(args)
    base = EncoderConfig.from_dict(saved) if saved else encoder_config_from_args(args)
    return Encoder(config=dataclasses.replace(base, **given))


def run_index(args) -> int:
    from tqdm import tqdm

    from bertserve.search import Collection

    if args.milvus:
        from bertserve.search.milvus import MilvusCollection

        exists = MilvusCollection.exists(args.milvus, args.collection)
        encoder = _encoder(args, required=not exists)
        index = "FLAT" if args.index == "auto" else args.index
        col = (MilvusCollection.open(args.milvus, args.collection, encoder=encoder) if exists else
               MilvusCollection.create(args.milvus, args.collection, encoder=encoder, index=index,
                                       metric=args.metric, bm25=False if args.analyzer == "none" else args.analyzer))
    else:
        path = Path(args.collection)
        exists = (path / "collection.json").exists()
        encoder = _encoder(args, required=not exists)
        if args.reembed and (not exists or encoder is None):
            raise BadInput("--reembed re-embeds an existing collection with the encoder given by --model "
                             "and/or encoder options")
        col = (Collection.open(path, encoder=encoder, reembed=args.reembed) if exists else
               Collection.create(path, encoder=encoder, index=args.index, metric=args.metric,
                                 bm25=False if args.analyzer == "none" else args.analyzer))
    total = sum(1 for _ in open(args.file, encoding="utf-8")) - (1 if args.file.endswith(".csv") else 0)
    added = skipped = 0
    with col, tqdm(total=total, unit="rec", disable=args.quiet, file=sys.stderr) as bar:
        batch = []

        def flush():
            nonlocal added, skipped
            present = col.has([b[0] for b in batch])
            todo = [b for b, p in zip(batch, present) if not p]
            skipped += len(batch) - len(todo)
            if todo:
                ids, texts, metas = (list(x) for x in zip(*todo))
                col.add(texts=texts, ids=ids, metadata=metas)
                added += len(todo)
            bar.update(len(batch))
            batch.clear()

        for record in read_records(args.file, args.format, args.id_field, args.text_field):
            batch.append(record)
            if len(batch) >= args.batch:
                flush()
        if batch:
            flush()
        print(json.dumps({"added": added, "skipped_existing": skipped, **col.stats()}))
    return 0


def run_search(args) -> int:
    from bertserve.search import Collection

    filt = _json_arg(args.filter, "--filter")
    params = _json_arg(args.params, "--params")
    encoder = _encoder(args, required=False)
    if args.milvus:
        from bertserve.search.milvus import MilvusCollection
        col = MilvusCollection.open(args.milvus, args.collection, encoder=encoder)
    else:
        col = Collection.open(args.collection, encoder=encoder)
    with col:
        modes = {} if args.mode == "dense" else {"mode": args.mode, "fusion": args.fusion, "rrf_k": args.rrf_k,
                                                 "weights": _json_arg(args.weights, "--weights")}
        for hit in col.search(args.query, k=args.k, filter=filt, params=params, **modes):
            row = hit._asdict()
            if row["scores"] is None:
                del row["scores"]
            print(json.dumps(row, ensure_ascii=False))
    return 0


def run_cluster(args) -> int:
    import numpy as np

    from bertserve.search import Collection

    with Collection.open(args.collection) as col:
        ids, result = col.kmeans(args.k, niter=args.niter, seed=args.seed)
        # for each cluster, the items nearest its centroid, to show what it is about
        sample = {}
        for c in range(args.k):
            members = np.flatnonzero(result.labels == c)
            if len(members):
                vecs = np.stack([it.vector for it in col.get([ids[i] for i in members])])
                near = members[np.argsort(((vecs - result.centroids[c]) ** 2).sum(1))[:args.examples]]
                sample[c] = [ids[i] for i in near]
        if args.save_field:
            for c in range(args.k):
                chosen = [ids[i] for i in np.flatnonzero(result.labels == c)]
                if chosen:
                    metas = [{**it.metadata, args.save_field: c} for it in col.get(chosen)]
                    col.update(chosen, metadata=metas)
        texts = {it.id: it.text for it in col.get([i for v in sample.values() for i in v])}
    for c in range(args.k):
        examples = [{"id": i, "text": texts[i]} for i in sample.get(c, [])]
        print(json.dumps({"cluster": c, "size": int((result.labels == c).sum()), "examples": examples},
                         ensure_ascii=False))
    return 0


def _json_arg(value, flag):
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{flag} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadInput(f"{flag} is nested too deeply") from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("index", help="add a file of texts (JSON lines, CSV or plain lines) to a collection")
    p.add_argument("file")
    p.add_argument("--collection", "-c", required=True, help="collection folder (created when missing)")
    p.add_argument("--format", choices=("auto", "jsonl", "csv", "lines"), default="auto")
    p.add_argument("--id-field", default="id")
    p.add_argument("--text-field", default="text")
    p.add_argument("--index", default="auto", help="Faiss factory string or 'auto' (new collections); "
                   "with --milvus a Milvus index type (auto: FLAT)")
    p.add_argument("--metric", choices=("cosine", "ip", "l2"), default="cosine")
    p.add_argument("--analyzer", default="standard",
                   help="BM25 analyzer of a new collection: standard, english, chinese, chinese-jieba, or none")
    p.add_argument("--batch", type=int, default=INDEX_BATCH, help="records per durable add")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--milvus", metavar="URI", help=MILVUS_HELP)
    p.add_argument("--reembed", action="store_true", help="embed every stored text again with the encoder given "
                   "(--model and/or encoder options) and make it the collection's encoder")
    add_encoder_arguments(p)
    p.set_defaults(func=run_index)

    p = subparsers.add_parser("search", help="search a collection with a text query")
    p.add_argument("collection")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--filter", help='metadata filter as JSON, e.g. \'{"year": {"$gte": 2018}}\'')
    p.add_argument("--params", help='search parameters as JSON, e.g. \'{"nprobe": 16}\'')
    p.add_argument("--mode", choices=("dense", "bm25", "hybrid"), default="dense",
                   help="vectors, keywords (BM25) or both fused")
    p.add_argument("--fusion", choices=("rrf", "weighted"), default="rrf", help="how hybrid fuses the two")
    p.add_argument("--rrf-k", type=float, default=60, help="the k of reciprocal rank fusion")
    p.add_argument("--weights", help='hybrid weights as JSON, e.g. \'{"dense": 0.7, "bm25": 0.3}\'')
    p.add_argument("--milvus", metavar="URI", help=MILVUS_HELP)
    add_encoder_arguments(p)
    p.set_defaults(func=run_search)

    p = subparsers.add_parser("cluster", help="k-means over a collection's vectors")
    p.add_argument("collection")
    p.add_argument("-k", type=int, required=True)
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--examples", type=int, default=3, help="items shown per cluster")
    p.add_argument("--save-field", help="write each item's cluster into this metadata field")
    p.set_defaults(func=run_cluster)
