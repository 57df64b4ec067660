"""`bertserve index / search / cluster` in-process, with the bundled MiniLM."""
from __future__ import annotations

import csv
import json

import pytest

from bertserve.cli import main
from bertserve.search import Collection
from test_search_http import lee_sentences


def run(capsys, *argv) -> tuple[int, list]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.timeout(240)
def test_index_resume_search_cluster(tmp_path, capsys):
    sentences = lee_sentences(80)
    data = tmp_path / "news.jsonl"
    rows = [{"id": f"n{i}", "text": s, "year": 2000 + i % 5} for i, s in enumerate(sentences[:60])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    col = str(tmp_path / "col")
    code, out = run(capsys, "index", str(data), "-c", col, "--index", "Flat", "-q")
    assert code == 0 and out[0]["added"] == 60 and out[0]["count"] == 60
    # rerun with more lines: only the new ones are encoded and added (resumable)
    rows += [{"id": f"n{i}", "text": s, "year": 2010} for i, s in enumerate(sentences[60:], start=60)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = run(capsys, "index", str(data), "-c", col, "-q")
    assert out[0]["added"] == 20 and out[0]["skipped_existing"] == 60 and out[0]["count"] == 80

    code, hits = run(capsys, "search", col, sentences[12], "-k", "3")
    assert code == 0 and hits[0]["id"] == "n12" and hits[0]["text"] == sentences[12] and len(hits) == 3
    code, hits = run(capsys, "search", col, sentences[12], "-k", "5", "--filter", '{"year": {"$gte": 2004}}')
    assert len(hits) == 5 and all(h["metadata"]["year"] >= 2004 for h in hits)
    assert main(["search", col, "x", "--filter", "{not json"]) == 2
    assert main(["search", col, "x", "--filter", '{"year": {"$regex": "1"}}']) == 2
    assert main(["search", str(tmp_path / "nothing"), "x"]) == 2
    capsys.readouterr()

    code, clusters = run(capsys, "cluster", col, "-k", "4", "--save-field", "topic")
    assert code == 0 and len(clusters) == 4
    assert sum(c["size"] for c in clusters) == 80
    assert all(len(c["examples"]) == min(3, c["size"]) for c in clusters)
    with Collection.open(col) as c:
        metas = [it.metadata for it in c.get([f"n{i}" for i in range(80)])]
    assert sorted({m["topic"] for m in metas}) == [0, 1, 2, 3] and metas[0]["year"] == 2000


@pytest.mark.timeout(240)
def test_index_plain_lines_and_csv(tmp_path, capsys):
    sentences = lee_sentences(30)
    lines = tmp_path / "a.txt"
    lines.write_text("\n".join(sentences[:20]) + "\n")
    code, out = run(capsys, "index", str(lines), "-c", str(tmp_path / "c1"), "-q")
    assert out[0]["added"] == 20
    table = tmp_path / "b.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["key", "body", "src"])
        w.writeheader()
        w.writerows({"key": f"k{i}", "body": s, "src": "lee"} for i, s in enumerate(sentences[20:]))
    code, out = run(capsys, "index", str(table), "-c", str(tmp_path / "c2"), "--id-field", "key",
                    "--text-field", "body", "-q")
    assert out[0]["added"] == 10
    code, hits = run(capsys, "search", str(tmp_path / "c2"), sentences[25], "-k", "1")
    assert hits[0]["id"] == "k5" and hits[0]["metadata"] == {"src": "lee"}
    assert main(["index", str(table), "-c", str(tmp_path / "c3"), "--text-field", "nope", "-q"]) == 2
