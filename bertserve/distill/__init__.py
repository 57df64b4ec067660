"""Distillation: smaller students trained to reproduce a teacher (labels or sentence embeddings).

Modules: ``students`` (transformer student specs and builders), ``embedding`` (sentence-embedding
distillation), ``embed_report`` (its evaluation), ``embed_cli`` (the ``distill --objective embedding`` options).
"""
