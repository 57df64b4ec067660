"""Write a distilled embedding student as a sentence-transformers folder.

Layout (the one sentence-transformers itself writes, so every loader of that format reads it):
    config.json, model.safetensors, tokenizer files      the transformer (module 0, path "")
    1_Pooling/config.json                                the teacher's pooling mode
    2_Dense/{config.json, model.safetensors}             only when the student was narrower than the teacher
    N_Normalize/                                         only when the teacher's vectors are normalized
    modules.json, sentence_bert_config.json, distill_info.json (how it was made; format_version)
"""
from __future__ import annotations

import json
from pathlib import Path

FORMAT_VERSION = 1
_POOLING_KEYS = {"REDUCE_MEAN": "pooling_mode_mean_tokens", "FIRST_TOKEN": "pooling_mode_cls_token",
                 "REDUCE_MAX": "pooling_mode_max_tokens", "REDUCE_MEAN_SQRT_LEN": "pooling_mode_mean_sqrt_len_tokens"}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_student(distiller, out: str | Path) -> Path:
    """Save ``distiller``'s student (an EmbeddingDistiller after training) into ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    student, head, tokenizer = distiller.student, distiller.head, distiller.tokenizer
    info = distiller.info()
    if hasattr(student.config, "distill_init"):
        del student.config.distill_init  # recorded in distill_info.json instead
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    width = student.config.hidden_size
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    # The teacher's limit, not the training one: the student is served on the same texts as the teacher.
    max_len = min(distiller.teacher.max_seq_len, student.config.max_position_embeddings)
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": max_len, "do_lower_case": False})
    pooling = {key: False for key in _POOLING_KEYS.values()}
    pooling.update({"word_embedding_dimension": width, _POOLING_KEYS[head.mode]: True})
    _write_json(out / "1_Pooling" / "config.json", pooling)
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if head.projection is not None:
        dense = out / "2_Dense"
        _write_json(dense / "config.json", {
            "in_features": width, "out_features": head.projection.out_features, "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity"})
        save_file({"linear.weight": head.projection.weight.detach().contiguous(),
                   "linear.bias": head.projection.bias.detach().contiguous()}, str(dense / "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    if head.normalize:
        idx = len(modules)
        (out / f"{idx}_Normalize").mkdir(exist_ok=True)
        modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    _write_json(out / "modules.json", modules)
    _write_json(out / "distill_info.json", {"format_version": FORMAT_VERSION, **info})
    return out
