"""GPT-style generation: train-lm on real Chinese text (People's Daily), the Generator against transformers'
own `generate`, and the OpenAI completions API driven by the real `openai` client.

The model is a 2-layer GPT-2 the session trains in seconds on the first lines of People's Daily with the
bert-base-chinese vocabulary; what is compared with transformers is exact token ids, not texts we wrote down.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from bertserve.errors import BadInput, Conflict
from bertserve.tasks.generate.corpus import peoples_daily_path, read_corpus, strip_tags
from bertserve.tasks.generate.generator import Generator
from bertserve.tasks.generate.train import TrainConfig, train_lm

pytestmark = pytest.mark.timeout(300)
PROMPTS = ["中国人民", "新华社北京一月一日电", "今年的经济工作要", "改革"]


def tiny_config(out, **overrides) -> TrainConfig:
    fields = dict(corpus=str(peoples_daily_path()), out=str(out), tokenizer="chinese", prune_vocab=True,
                  layers=2, width=48, heads=2, context=64, batch_size=8, steps=40, warmup=5, eval_every=20,
                  eval_blocks=20, lr=3e-3, max_lines=400, threads=1, seed=0)
    fields.update(overrides)
    return TrainConfig(**fields)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_lm")
    train_lm(tiny_config(out), progress=False)
    return out


@pytest.fixture(scope="module")
def hf(tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_lm).eval(), AutoTokenizer.from_pretrained(tiny_lm)


@pytest.fixture(scope="module")
def generator(hf):
    gen = Generator(*hf, max_streams=3, max_new_tokens=48)
    yield gen
    gen.close()


def hf_greedy(hf, prompt: str, n: int, **kw) -> list[int]:
    model, tok = hf
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, **kw)
    return out[0, ids.shape[1]:].tolist()


# ---- corpus and training ----

def test_people_daily_tags_are_stripped():
    line = "19980101-01-001-002/m  中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr"
    assert strip_tags(line) == "中共中央总书记、国家主席江泽民"
    docs = read_corpus(peoples_daily_path(), max_lines=50)
    assert docs and not any("/n" in d or "  " in d for d in docs)


def test_train_lm_output_loads_unchanged_and_reports_perplexity(tiny_lm, hf):
    model, tok = hf
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert tok("中国")["input_ids"][0] == tok.cls_token_id          # prompts start like training documents
    assert tok.decode(tok("中国", add_special_tokens=False)["input_ids"]) == "中 国"   # per character
    report = json.loads((tiny_lm / "train_report.json").read_text())
    held = report["heldout"]
    assert report["steps"] == 40 and len(report["evals"]) == 2
    assert math.isclose(held["perplexity"], math.exp(held["loss"]))
    assert held["perplexity"] < report["vocab_size"]                 # it learned something
    assert 1 < held["bigram_kn_perplexity"] < held["unigram_perplexity"]
    assert (tiny_lm / "loss_curve.png").stat().st_size > 1000
    assert not list(tiny_lm.glob("checkpoint/*.tmp"))


def test_interrupted_training_resumes_to_the_same_model(tmp_path):
    cfg = dict(steps=8, eval_every=4, max_lines=150, width=32, context=32, baselines=False)
    whole = train_lm(tiny_config(tmp_path / "whole", **cfg), progress=False)
    # an interruption after the first eval: --max-minutes stops it there, with a checkpoint
    cut = train_lm(tiny_config(tmp_path / "resumed", max_minutes=1e-9, **cfg), progress=False)
    assert cut["stopped_early"] and cut["steps"] < 8
    resumed = train_lm(tiny_config(tmp_path / "resumed", **cfg), progress=False)
    assert resumed["steps"] == 8
    assert resumed["heldout"]["loss"] == pytest.approx(whole["heldout"]["loss"], abs=1e-6)
    with pytest.raises(Conflict, match="different run"):
        train_lm(tiny_config(tmp_path / "resumed", **{**cfg, "width": 64}), progress=False)


def test_bad_train_config_is_refused_before_work():
    with pytest.raises(BadInput, match="divisible"):
        TrainConfig(corpus="x", out="y", width=50, heads=3)


# ---- decoding ----

def test_greedy_equals_transformers_generate_token_for_token(generator, hf):
    # four prompts of different lengths share decoding steps (3 slots: one joins when another leaves)
    lengths = [40, 25, 33, 18]
    outs = [generator.submit(p, temperature=0, max_new_tokens=n) for p, n in zip(PROMPTS, lengths)]
    for prompt, n, stream in zip(PROMPTS, lengths, outs):
        got = stream.future.result(60)
        ref = hf_greedy(hf, prompt, n)
        want = ref[:-1] if ref[-1] == hf[0].config.eos_token_id else ref
        assert got.token_ids == want, prompt
        assert got.finish_reason == ("stop" if len(want) < n else "length")
        assert got.prompt_tokens == len(hf[1](prompt)["input_ids"])


def test_greedy_with_repetition_penalty_equals_transformers(generator, hf):
    got = generator.generate(PROMPTS[2], max_new_tokens=30, temperature=0, repetition_penalty=1.3)[0]
    assert got.token_ids == hf_greedy(hf, PROMPTS[2], 30, repetition_penalty=1.3)[: len(got.token_ids)]


def test_seeded_sampling_is_reproducible_whatever_the_batch(generator):
    opts = dict(max_new_tokens=24, temperature=0.9, top_k=40, top_p=0.9, ignore_eos=True)
    alone = generator.generate(PROMPTS[1], seed=7, **opts)[0]
    crowd = [generator.submit(p, seed=7 if i == 2 else i, **opts) for i, p in enumerate([PROMPTS[0], PROMPTS[3],
                                                                                          PROMPTS[1]])]
    assert crowd[2].future.result(60).token_ids == alone.token_ids
    others = {tuple(generator.generate(PROMPTS[1], seed=s, **opts)[0].token_ids) for s in (1, 2, 3)}
    assert len(others) > 1                                   # seeds matter


def test_stop_strings_and_streaming_text_match_the_final_text(generator):
    full = generator.generate(PROMPTS[0], max_new_tokens=30, temperature=0, ignore_eos=True)[0]
    assert len(full.text) > 6
    stop = full.text[4:6]
    cut = generator.generate(PROMPTS[0], max_new_tokens=30, temperature=0, stop=[stop], ignore_eos=True)[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    assert "".join(generator.stream(PROMPTS[0], max_new_tokens=30, temperature=0, stop=stop,
                                    ignore_eos=True)) == cut.text


@pytest.mark.parametrize("vocab", ["chinese", "bpe:300"])
def test_incremental_text_equals_decoding_the_whole_output(vocab):
    from bertserve.tasks.generate.generator import IncrementalText
    from bertserve.tasks.generate.models import make_detokenizer
    from bertserve.tasks.generate.tokenizers import build_tokenizer

    docs = read_corpus(peoples_daily_path(), max_lines=60)
    tok = build_tokenizer(vocab, docs + ["Mixed English words, 1998 and ＧＤＰ！"])
    detokenize = make_detokenizer(tok)
    # byte-level BPE splits a Chinese character over tokens: the half characters must wait, not show
    for text in docs[40:45] + ["Mixed English words, 1998 and ＧＤＰ！ 中国"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        inc, shown = IncrementalText(detokenize), []
        for n in range(1, len(ids) + 1):
            shown.append(inc.push(ids[:n]))
            assert "\ufffd" not in shown[-1] and shown[-1].startswith(shown[-2] if n > 1 else "")
        assert shown[-1] == detokenize(ids)


@pytest.mark.parametrize("options, match", [
    (dict(max_new_tokens=49), "cap of 48"), (dict(temperature=-0.5), "temperature"), (dict(top_p=0), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(seed="x"), "seed")])
def test_bad_decoding_options_are_refused(generator, options, match):
    with pytest.raises(BadInput, match=match):
        generator.submit(PROMPTS[0], **options)


def test_prompt_longer_than_the_context_is_refused(generator):
    with pytest.raises(BadInput, match="context is 64"):
        generator.submit("中" * 80)


# ---- HTTP: the real openai client ----

@pytest.fixture(scope="module")
def server(tiny_lm):
    from bertserve.serve.process import ServerProcess

    srv = ServerProcess("--no-zmq", "--generator", str(tiny_lm), "--generator-max-new-tokens", "48")
    yield srv.url
    assert srv.stop() == 0, srv.log_text()[-2000:]


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


def test_openai_completions_match_the_generator(client, generator):
    want = generator.generate(PROMPTS[:2], max_new_tokens=20, temperature=0)
    got = client.completions.create(model="tiny", prompt=PROMPTS[:2], max_tokens=20, temperature=0)
    assert [c.text for c in got.choices] == [w.text for w in want]
    assert [c.index for c in got.choices] == [0, 1]
    assert got.usage.completion_tokens == sum(w.completion_tokens for w in want)
    assert got.usage.prompt_tokens == sum(w.prompt_tokens for w in want)


def test_openai_streaming_n_and_seed(client, generator):
    kw = dict(model="tiny", prompt=PROMPTS[1], max_tokens=16, temperature=0.8, seed=5, n=2)
    whole = client.completions.create(**kw)
    texts = {0: "", 1: ""}
    finish = {}
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        if chunk.usage:
            assert chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]
    assert set(finish) == {0, 1}


def test_sse_ends_with_done(server):
    with httpx.stream("POST", server + "/v1/completions", json={"prompt": "中国", "max_tokens": 5,
                                                                "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


def test_chat_without_a_template_is_a_clear_400(client):
    import openai

    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "你好"}])


@pytest.mark.parametrize("body, match", [
    ({"prompt": "中" * 80}, "context"), ({"prompt": "中国", "max_tokens": 1000}, "cap"),
    ({"prompt": "中国", "n": 50}, "n must be"), ({"prompt": "中国", "temperature": -1}, "temperature"),
    ({"prompt": []}, "empty"), ({"prompt": "中国", "logprobs": 2}, "logprobs")])
def test_limits_are_400_with_a_message(server, body, match):
    r = httpx.post(server + "/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert match in r.json()["error"]["message"]


def test_disconnecting_client_frees_its_slot(server):
    def engine():
        return httpx.get(server + "/status").json()["engines"]["generate"]

    # streams far longer than the rest of the test: whichever way the race goes, the slots must come back
    for _ in range(3):
        with httpx.stream("POST", server + "/v1/completions", json={"prompt": "中国", "max_tokens": 48, "n": 8,
                                                                    "stream": True, "ignore_eos": True}) as r:
            next(r.iter_lines())
    deadline = time.monotonic() + 30
    while engine()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine()["running"] == 0 and engine()["waiting"] == 0
    assert engine()["statistic"]["requests"] >= 24   # every stream accounted for: cancelled or done
    assert 'bertserve_tokens_total{engine="generate"}' in httpx.get(server + "/metrics").text
    assert httpx.post(server + "/v1/completions", json={"prompt": "中国", "max_tokens": 4}).status_code == 200


def test_a_cancelled_stream_leaves_at_the_next_step(generator):
    pieces = []

    def listener(event):   # what the HTTP route does when its client goes away: cancel, from any thread
        pieces.append(event)
        if event.kind == "text":
            stream.cancel()

    before = generator.describe()["cancelled"]
    stream = generator.submit(PROMPTS[0], listener, max_new_tokens=40, temperature=0, ignore_eos=True)
    with pytest.raises(Exception, match="cancelled"):
        stream.future.result(60)
    assert [e.kind for e in pieces] == ["text", "error"]
    assert len(stream.output) < 40 and generator.describe()["cancelled"] == before + 1


def test_chat_with_a_template(hf, tmp_path):
    import shutil

    model, tok = hf
    folder = tmp_path / "chat"
    shutil.copytree(model.config.name_or_path, folder, ignore=shutil.ignore_patterns("checkpoint"))
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(folder)
    gen = Generator(str(folder))
    try:
        ids = gen.chat_prompt([{"role": "user", "content": "中国"}])
        assert ids == tok("中国", add_special_tokens=False)["input_ids"]
    finally:
        gen.close()


def test_cli_generate_streams_to_the_terminal(tiny_lm):
    out = subprocess.run([sys.executable, "-m", "bertserve.cli", "generate", "中国", "--model", str(tiny_lm),
                          "--max-new-tokens", "8", "--temperature", "0"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    gen = Generator(str(tiny_lm))
    try:
        assert out.stdout.strip() == "中国" + gen.generate("中国", max_new_tokens=8, temperature=0)[0].text
    finally:
        gen.close()
