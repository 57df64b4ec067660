"""Decoding speed: bertserve's Generator against transformers' own `generate`, same model, same prompts.

    PYTHONPATH=. .venv/bin/python benchmarks/generate.py --model DIR [--rounds 3] [--new-tokens 64] [--threads 2]
    PYTHONPATH=. .venv/bin/python benchmarks/generate.py --model smollm2 --quick      # a smoke run

Contenders, rounds interleaved, greedy decoding of exactly --new-tokens tokens per stream (end tokens ignored,
so every contender produces the same number of tokens):
- 1 stream: transformers `model.generate` prompt after prompt, and `Generator.generate` prompt after prompt;
- 8 concurrent streams: transformers serving them one after another (what a server that calls `generate` per
  request does), transformers on one left-padded batch of 8 (static batching: the best case, all requests
  known up front), and the Generator with 8 streams submitted at once (continuous batching).
Reported: aggregate generated tokens/s (median and min over rounds), the ratio to transformers of the same
round, and every contender's time to first token (request arrival -> first new token; transformers' noted
by a streamer). Other processes' CPU seconds are
recorded per round: on a shared machine a disturbed round shows itself there.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BERTSERVE_CACHE", str(Path(__file__).parent / ".cache"))

import torch  # noqa: E402

from bertserve.machine_load import Meter  # noqa: E402
from bertserve.tasks.generate.generator import Generator  # noqa: E402
from bertserve.tasks.generate.models import load_causal_lm, make_detokenizer  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def prompts_for(tokenizer, count: int) -> list[str]:
    """Real text openings: People's Daily for a Chinese vocabulary, Lee/Wikipedia English otherwise."""
    if tokenizer.convert_tokens_to_ids("的") not in (None, tokenizer.unk_token_id):
        from bertserve.tasks.generate.corpus import peoples_daily_path, read_corpus

        docs = read_corpus(peoples_daily_path(), max_lines=4000)[-count * 7::7]
        return [d[:12 + 3 * (i % 4)] for i, d in enumerate(docs[:count])]
    from bertserve.encode.backends.sample import english_sentences

    return [" ".join(s.split()[:6 + i % 4]) for i, s in enumerate(english_sentences()[:count])]


class FirstToken:
    """A transformers streamer that notes when `generate` hands out its first new token (its first `put`
    is the prompt)."""

    def __init__(self):
        self.puts, self.at = 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2:
            self.at = time.perf_counter()

    def end(self):
        pass


class HFOneByOne:
    """`together`: the requests all arrive at the start (8 concurrent streams served one after another), so
    a request's time to first token includes the requests before it."""

    def __init__(self, model, tok, n, together=False):
        self.model, self.tok, self.n, self.together = model, tok, n, together

    def run(self, prompts):
        total, ttft = 0, []
        arrived = time.perf_counter()
        with torch.inference_mode():
            for p in prompts:
                ids = self.tok(p, return_tensors="pt")["input_ids"]
                first, start = FirstToken(), arrived if self.together else time.perf_counter()
                out = self.model.generate(ids, max_new_tokens=self.n, min_new_tokens=self.n, do_sample=False,
                                          streamer=first)
                total += out.shape[1] - ids.shape[1]
                ttft.append(first.at - start)
        return total, ttft


class HFPaddedBatch(HFOneByOne):
    def run(self, prompts):
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        first, start = FirstToken(), time.perf_counter()
        batch = self.tok(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=self.n, min_new_tokens=self.n, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id, streamer=first)
        return (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts), [first.at - start] * len(prompts)


class BertserveStreams:
    def __init__(self, gen: Generator, n, concurrent: bool):
        self.gen, self.n, self.concurrent = gen, n, concurrent

    def run(self, prompts):
        opts = dict(max_new_tokens=self.n, temperature=0, ignore_eos=True)
        if self.concurrent:
            streams = [self.gen.submit(p, **opts) for p in prompts]
            done = [s.future.result() for s in streams]
        else:
            streams, done = [], []
            for p in prompts:
                streams.append(self.gen.submit(p, **opts))
                done.append(streams[-1].future.result())
        ttft = [s.first_token_at - s.submitted for s in streams]
        return sum(d.completion_tokens for d in done), ttft


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder, .gguf file or 'smollm2'")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 round, 16 new tokens: proves the script works")
    ap.add_argument("--out", default=None, help="results file stem (default: results/generate[-quick])")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.new_tokens = 1, 16
    torch.set_num_threads(args.threads)

    model, tok = load_causal_lm(args.model)
    gen = Generator(model, tok, max_streams=args.streams, max_new_tokens=max(512, args.new_tokens))
    prompts = prompts_for(tok, args.streams)
    one = prompts[:2] if args.quick else prompts[:4]
    contenders = {
        "1 stream: transformers generate": (HFOneByOne(model, tok, args.new_tokens), one),
        "1 stream: bertserve Generator": (BertserveStreams(gen, args.new_tokens, False), one),
        f"{args.streams} streams: transformers generate, one request after another":
            (HFOneByOne(model, tok, args.new_tokens, together=True), prompts),
        f"{args.streams} streams: transformers generate, one padded batch (static)":
            (HFPaddedBatch(model, tok, args.new_tokens), prompts),
        f"{args.streams} streams: bertserve Generator, continuous batching":
            (BertserveStreams(gen, args.new_tokens, True), prompts),
    }
    # greedy agreement on the first prompt, so the speed figures compare equal work
    ids = tok(prompts[0], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        want = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                              do_sample=False)[0, ids.shape[1]:].tolist()
    got = gen.generate(prompts[0], max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)[0].token_ids
    rates = {name: [] for name in contenders}
    ttfts = {name: [] for name in contenders}
    rounds = []
    BertserveStreams(gen, 2, True).run(prompts[:2])   # warm-up
    for r in range(args.rounds):
        with Meter() as whole:
            for name, (c, ps) in contenders.items():
                with Meter() as m:
                    tokens, ttft = c.run(ps)
                rates[name].append(tokens / m.sample.wall)
                ttfts[name] += ttft
        rounds.append({"round": r, "wall_s": round(whole.sample.wall, 2),
                       "others_cpu_s": round(whole.sample.others_cpu, 2)})
        print(f"round {r}: {whole.sample.wall:.1f} s, other processes used {whole.sample.others_cpu:.1f} CPU s",
              file=sys.stderr)
    gen.close()

    names = list(contenders)
    peer_of = {n: names[0] if n.startswith("1 stream") else names[2] for n in names}
    table = []
    for n in names:
        ratio = [a / b for a, b in zip(rates[n], rates[peer_of[n]])]
        row = {"contender": n, "tokens_per_s_median": round(statistics.median(rates[n]), 1),
               "tokens_per_s_min": round(min(rates[n]), 1), "vs_transformers": round(statistics.median(ratio), 2)}
        if ttfts[n]:
            row["ttft_ms_median"] = round(1000 * statistics.median(ttfts[n]), 1)
            row["ttft_ms_max"] = round(1000 * max(ttfts[n]), 1)
        table.append(row)
    result = {"model": str(args.model), "architecture": type(model).__name__,
              "parameters": model.num_parameters(), "new_tokens": args.new_tokens, "streams": args.streams,
              "threads": args.threads, "rounds": rounds, "greedy_equal_to_transformers": got == want,
              "prompts": prompts, "sample_output": make_detokenizer(tok)(got),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "torch": torch.__version__}, "results": table,
              "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / (args.out or ("generate-quick" if args.quick else "generate"))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    lines = [f"# Decoding speed: {result['architecture']} ({result['parameters']:,} parameters), "
             f"{args.new_tokens} new tokens a stream, {args.threads} threads, {args.rounds} rounds",
             "", "| contender | tokens/s median | min | vs transformers | TTFT ms median (max) |", "|---|---|---|---|---|"]
    for row in table:
        ttft = f"{row['ttft_ms_median']} ({row['ttft_ms_max']})" if "ttft_ms_median" in row else ""
        lines.append(f"| {row['contender']} | {row['tokens_per_s_median']} | {row['tokens_per_s_min']} | "
                     f"{row['vs_transformers']}x | {ttft} |")
    lines += ["", f"Greedy output equal to transformers: {got == want}. Other processes' CPU seconds per round: "
              + ", ".join(str(r["others_cpu_s"]) for r in rounds)]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
