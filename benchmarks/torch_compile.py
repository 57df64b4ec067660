"""torch.compile (inductor, dynamic shapes) against eager torch, fp32 and bf16, for all-MiniLM-L6-v2 mean-pooled
vectors: compile time paid once, sentences/s in interleaved rounds (medians, other processes' CPU recorded), one
sentence latency, and quality against eager fp32. A probe for the encode-speed issue's "torch.compile with bf16"
direction: the Encoder has no compiled backend unless this shows a win.

    PYTHONPATH=. .venv/bin/python benchmarks/torch_compile.py [--sentences 1000] [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bertserve.encode.backends.quality import measure_quality
from bertserve.encode.backends.sample import english_sentences
from bertserve.machine_load import describe_machine, measure_speed, summarize_speed
from bertserve.models.registry import resolve

BATCH = 32


def make_encoder(model, tokenizer, dtype):
    @torch.inference_mode()
    def encode(texts):
        order = np.argsort([len(t) for t in texts])
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        for i in range(0, len(texts), BATCH):
            idx = order[i:i + BATCH]
            batch = tokenizer([texts[j] for j in idx], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
        return out
    return encode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "torch_compile.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    path = resolve(None)[0]
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = english_sentences(args.sentences)
    contenders, compile_s = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        eager = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval().to(dtype)
        name = "fp32" if dtype == torch.float32 else "bf16"
        contenders[f"eager {name}"] = make_encoder(eager, tokenizer, dtype)
        compiled = torch.compile(AutoModel.from_pretrained(path, attn_implementation="sdpa").eval().to(dtype),
                                 dynamic=True)
        run = make_encoder(compiled, tokenizer, dtype)
        start = time.perf_counter()
        run(texts[:BATCH * 4])  # several lengths: the dynamic-shape graph and its recompiles
        compile_s[f"compiled {name}"] = round(time.perf_counter() - start, 1)
        contenders[f"compiled {name}"] = run
    reference = contenders["eager fp32"](texts)
    report = {"machine": describe_machine(), "sentences": len(texts), "threads": args.threads,
              "compile_s": compile_s, "rows": {}}
    for name, run in contenders.items():
        q = measure_quality(reference, run(texts))
        report["rows"][name] = {"mean_cos": q.mean_cosine, "min_cos": q.min_cosine}
    runs = measure_speed(contenders, texts, rounds=args.rounds, latency_texts=20)
    speed = summarize_speed(runs)
    for name, t in speed.items():
        report["rows"][name].update(texts_per_s=t["texts_per_s_median"], latency_p50_ms=t["latency_ms_p50"],
                                    other_cpu_s=runs[name]["other_cpu_s"],
                                    vs_eager_fp32=t["texts_per_s_median"] / speed["eager fp32"]["texts_per_s_median"])
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{report['machine']}; {len(texts)} sentences, {args.threads} threads, {args.rounds} rounds; compile {compile_s}")
    print("| path | sentences/s | vs eager fp32 | one sentence p50 ms | mean / min cos to eager fp32 | others' CPU s |")
    print("|---|---|---|---|---|---|")
    for name, row in report["rows"].items():
        print(f"| {name} | {row['texts_per_s']:.0f} | {row['vs_eager_fp32']:.2f}x | {row['latency_p50_ms']:.1f} | "
              f"{row['mean_cos']:.6f} / {row['min_cos']:.6f} | {max(row['other_cpu_s']):.1f} |")


if __name__ == "__main__":
    main()
