"""Labelled text sets for fine-tuning and distillation.

Files are JSONL, CSV or TSV with a `text` column, an optional `text_b` column (sentence pairs) and a
`label` column; a plain `.txt` file holds one unlabelled text per line (for the transfer set). Labels
are kept as strings: their names travel with the saved model, so "pos"/"neg" and "0"/"1" both work.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from bertserve.errors import BadInput, MissingFile

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}


@dataclass(frozen=True)
class Example:
    text: str
    text_b: str | None = None
    label: str | None = None


@dataclass
class TextSet:
    examples: list[Example]
    label_names: list[str] = field(default_factory=list)
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    @property
    def texts_b(self) -> list[str | None]:
        return [e.text_b for e in self.examples]

    @property
    def has_pairs(self) -> bool:
        return any(e.text_b is not None for e in self.examples)

    def label_ids(self) -> list[int]:
        """Label index per example, -1 where the example has no label."""
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index[e.label] if e.label is not None else -1 for e in self.examples]


def _label_sort_key(name: str):
    # "2" before "10" for numeric labels; names otherwise alphabetical, so the order does not depend on
    # which label happens to come first in the file.
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def _rows(path: Path, fmt: str):
    """(line number, dict) per record."""
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BadInput(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise BadInput(f"{path}:{n}: each line must be a JSON object with a 'text' field")
                yield n, row
        elif fmt == "txt":
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, {"text": line.rstrip("\r\n")}
        else:
            reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
            if reader.fieldnames is None:
                return
            if "text" not in reader.fieldnames:
                raise BadInput(f"{path}: header {reader.fieldnames} has no 'text' column")
            for row in reader:
                yield reader.line_num, row


def _clean(value) -> str | None:
    if value is None:
        return None
    value = str(value)
    return value if value.strip() else None


def read_text_set(path, label_names: list[str] | None = None, labels: str = "required") -> TextSet:
    """Read a data file.

    labels: "required" (every row needs one), "optional" (rows without a label are unlabelled transfer
    data) or "ignore". When label_names is given (the training set's or a model's), a label outside it is
    an error rather than a silent new class.
    """
    if labels not in ("required", "optional", "ignore"):
        raise BadInput(f"labels must be 'required', 'optional' or 'ignore', not {labels!r}")
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"data file not found: {path}")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadInput(f"{path}: unknown data format {path.suffix!r}; use one of {sorted(FORMATS)}")
    if fmt == "txt" and labels == "required":
        raise BadInput(f"{path}: a .txt file holds unlabelled texts; give labelled data as JSONL, CSV or TSV")
    examples, seen = [], set()
    for n, row in _rows(path, fmt):
        text = _clean(row.get("text"))
        if text is None:
            raise BadInput(f"{path}:{n}: missing or empty 'text'")
        label = None if labels == "ignore" else _clean(row.get("label"))
        if label is None and labels == "required":
            raise BadInput(f"{path}:{n}: missing label (every row needs a 'label')")
        if label is not None:
            label = label.strip()
            if label_names is not None and label not in label_names:
                raise BadInput(f"{path}:{n}: unknown label {label!r}; known labels: {list(label_names)}")
            seen.add(label)
        examples.append(Example(text=text, text_b=_clean(row.get("text_b")), label=label))
    if not examples:
        raise BadInput(f"{path}: empty data file (no records)")
    names = list(label_names) if label_names is not None else sorted(seen, key=_label_sort_key)
    if labels == "required" and label_names is None and len(names) < 2:
        raise BadInput(f"{path}: a classifier needs at least 2 distinct labels, found {names}")
    return TextSet(examples=examples, label_names=names, source=str(path))


def write_text_set(path, examples: list[Example]) -> None:
    """Write examples as JSONL (used by the benchmark and tests to produce data files)."""
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            row = {"text": e.text}
            if e.text_b is not None:
                row["text_b"] = e.text_b
            if e.label is not None:
                row["label"] = e.label
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
