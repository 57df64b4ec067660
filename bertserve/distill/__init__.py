"""Distillation: smaller students trained to reproduce a teacher (its labels or its sentence embeddings).

Shared: ``students`` (transformer student specs and builders, vocab.txt students). Sentence embeddings:
``embedding`` (data, teacher-vector cache, training), ``embed_export`` (sentence-transformers folder),
``embed_report`` (agreement, rated similarity sets, speed, curve), ``embed_cli`` (``distill --objective
embedding`` options). The classification objective has its own modules beside these.
"""
