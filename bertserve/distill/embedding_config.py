"""The settings of embedding distillation, apart from the torch code that runs it: the command line reads its
fields and defaults without loading torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EmbeddingDistillConfig:
    out: str
    texts: tuple[str, ...] = ()              # files, one text per line
    teacher: str | None = None               # None: the bundled all-MiniLM-L6-v2
    student: str = "bert:layers=3"
    parallel: tuple[str, ...] = ()           # files of "source<TAB>translation" lines
    student_vocab: str | None = None         # WordPiece vocab.txt: a student with another tokenizer
    student_init: str | None = None          # a folder to start the student from instead of building one
    trim_vocab: bool = False                 # keep only the tokens the training texts use (+ specials, characters)
    trim_min_count: int = 1
    teacher_prefix: str = ""                 # prepended for the teacher only (e5: "query: ")
    allow_projection: bool = True
    cosine_weight: float = 0.0
    # Neighbourhood term: each student vector's softmax similarity to a bank of teacher vectors of other
    # training texts is pulled to the teacher's own (KL divergence); 0 turns it off.
    relation_weight: float = 0.0
    relation_temperature: float = 0.05
    relation_bank: int = 1024                # teacher vectors per step compared against (drawn afresh each step)
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 1e-4
    warmup: float = 0.05
    max_seq_len: int = 128
    heldout: int = 500                       # texts kept out of training, for the curve and the report
    eval_every: int = 100
    max_texts: int | None = None
    seed: int = 0
    cache_dir: str | None = None             # teacher vectors; default ~/.cache/bertserve/teacher-vectors
    threads: int | None = None
