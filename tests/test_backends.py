"""Every backend against the torch fp32 reference; the export cache (reuse, invalidation, damage); `auto`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bertserve import Encoder
from bertserve.encode.backends import EXACT, QualityGate, export_cache
from bertserve.encode.backends.bf16 import native_bf16
from bertserve.encode.backends.quality import measure_quality
from bertserve.machine_load import Meter
from bertserve.models import default_model_path
from conftest import save_tiny_bert

EN = ["First do it", "then do it right, then do it better", "", "Short.",
      "A considerably longer sentence, with punctuation; numbers like 3.14159 and unusual words. " * 3,
      "then do it right ||| then do it better", "the weather in Paris ||| is it raining today?"]
ZH = ["我爱北京天安门", "今天天气很好，我们去公园散步吧。", "这本书的内容非常精彩", "好", "我爱北京 ||| 天安门", ""]
FAST = ("onnx", "onnx-int8", "bf16", "openvino", "openvino-int8")
EXACT_MIN_COSINE = 0.99999
# Per-text cosine to torch fp32 each backend must keep on these small sets (mean, min). bf16 is near-exact; int8
# is the user's explicit trade (on all-MiniLM-L6-v2 it does not pass the gate, so `auto` never picks it there).
APPROXIMATE = {"bf16": (0.9999, 0.999), "onnx-int8": (0.98, 0.95), "openvino-int8": (0.98, 0.95)}


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def assert_close_to_torch(backend: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and np.isfinite(got).all()
    if got.ndim == 3:  # NONE pooling: token vectors; padding must stay exactly zero
        real = np.abs(want).sum(-1) > 0
        assert not got[~real].any()
        cos = row_cosines(got[real], want[real])
    else:
        cos = row_cosines(got, want)
    if backend in ("onnx", "openvino"):
        assert cos.min() >= EXACT_MIN_COSINE, cos
    else:
        mean, low = APPROXIMATE[backend]
        assert cos.mean() >= mean and cos.min() >= low, cos


def needs_bf16(backend: str) -> None:
    if backend == "bf16" and not native_bf16():
        pytest.skip("this CPU has no native bfloat16; test_bf16_is_refused_clearly_without_native_support covers it")


@pytest.fixture(scope="module")
def tiny_english_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_en") / "model", default_model_path() / "vocab.txt", layers=3)


@pytest.mark.parametrize("backend", FAST)
def test_default_model_on_english_text_and_pairs(backend):
    needs_bf16(backend)
    want = Encoder(backend="torch").encode(EN)
    got = Encoder(backend=backend).encode(EN)
    assert_close_to_torch(backend, got, want)


CASES = {  # tiny Chinese BERT (3 layers): every output the export can be asked for
    "mean": dict(),
    "none-pooling": dict(pooling="NONE", layers=(-2,), max_seq_len=None),
    "several-layers-mean-max": dict(pooling="REDUCE_MEAN_MAX", layers=(0, -1, 2), mask_cls_sep=True),
    "cls-pooled": dict(pooling="CLS_POOLED"),
    "cls-token-layer-1": dict(pooling="CLS_TOKEN", layers=(1,)),
    "sep-token-normalized": dict(pooling="SEP_TOKEN", normalize=True),
}


@pytest.fixture(scope="module")
def tiny_zh(tmp_path_factory, chinese_vocab):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_zh3") / "model", chinese_vocab, layers=3)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", FAST)
def test_every_pooling_and_layer_choice_on_every_backend(tiny_zh, backend, case):
    needs_bf16(backend)
    options = CASES[case]
    want = Encoder(tiny_zh, backend="torch", **options).encode(ZH)
    enc = Encoder(tiny_zh, backend=backend, **options)
    assert enc.backend.name == backend
    assert_close_to_torch(backend, enc.encode(ZH), want)


def test_export_exposes_only_the_outputs_the_layers_need(tiny_zh):
    import onnx

    enc = Encoder(tiny_zh, backend="onnx", layers=(1, -3, 0))  # -3 is layer 1 of 3
    graph = onnx.load(str(enc.backend.path)).graph
    assert [o.name for o in graph.output] == ["hidden_0", "hidden_1"]
    assert not any("layer.1/" in n.name or "layer.2/" in n.name for n in graph.node)  # stops after layer 1
    pooled = Encoder(tiny_zh, backend="onnx", pooling="CLS_POOLED")
    assert [o.name for o in onnx.load(str(pooled.backend.path)).graph.output] == ["hidden_3", "pooled"]


def test_bf16_is_refused_clearly_without_native_support(tiny_zh):
    if native_bf16():
        enc = Encoder(tiny_zh, backend="bf16")
        assert enc.backend.name == "bf16"
    else:
        with pytest.raises(ValueError, match="native bfloat16"):
            Encoder(tiny_zh, backend="bf16")


def test_cache_is_reused_and_rebuilt_when_weights_change(tmp_path, chinese_vocab):
    folder = save_tiny_bert(tmp_path / "m", chinese_vocab, seed=1)
    first = Encoder(folder, backend="onnx")
    stamp = first.backend.path.stat().st_mtime_ns
    again = Encoder(folder, backend="onnx")
    assert again.backend.path == first.backend.path and again.backend.path.stat().st_mtime_ns == stamp
    other_layers = Encoder(folder, backend="onnx", layers=(-2,))
    assert other_layers.backend.path.parent != first.backend.path.parent

    save_tiny_bert(folder, chinese_vocab, seed=2)  # same folder, new weights
    changed = Encoder(folder, backend="onnx")
    assert changed.backend.path.parent != first.backend.path.parent
    want = Encoder(folder, backend="torch").encode(ZH)
    assert row_cosines(changed.encode(ZH), want).min() >= EXACT_MIN_COSINE
    assert row_cosines(first.encode(ZH), want).min() < 0.99  # the old export really computed something else


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-model", "meta"])
def test_damaged_cache_entry_is_rebuilt_not_used(tmp_path, chinese_vocab, damage):
    folder = save_tiny_bert(tmp_path / "m", chinese_vocab, seed=3)
    path = Encoder(folder, backend="onnx").backend.path
    good = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an onnx graph" * 100)
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "other-model":  # a loadable graph of another model, same size: only the probe can tell
        other = save_tiny_bert(tmp_path / "other", chinese_vocab, seed=4)
        path.write_bytes(Encoder(other, backend="onnx").backend.path.read_bytes())
    else:
        (path.parent / "meta.json").write_text("{not json")
    rebuilt = Encoder(folder, backend="onnx")
    assert rebuilt.backend.path == path
    want = Encoder(folder, backend="torch").encode(ZH)
    assert row_cosines(rebuilt.encode(ZH), want).min() >= EXACT_MIN_COSINE
    assert json.loads((path.parent / "meta.json").read_text())["bytes"] == path.stat().st_size


@pytest.mark.parametrize("damage", ["garbage-weights", "truncated-graph", "meta"])
def test_int8_graph_is_quantized_once_then_read_back_and_rebuilt_when_damaged(tmp_path, chinese_vocab, damage):
    folder = save_tiny_bert(tmp_path / "m", chinese_vocab, seed=8)
    xml = Encoder(folder, backend="openvino-int8").backend.model_path  # the quantized IR, beside the export
    weights, stamp = xml.with_suffix(".bin"), xml.stat().st_mtime_ns
    want = Encoder(folder, backend="torch").encode(ZH)
    again = Encoder(folder, backend="openvino-int8")
    assert again.backend.model_path == xml and xml.stat().st_mtime_ns == stamp  # read back, not quantized again
    if damage == "garbage-weights":  # same size: only the probe sentence can tell
        weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))
    elif damage == "truncated-graph":
        xml.write_bytes(xml.read_bytes()[:200])
    else:
        (xml.parent / "meta.json").write_text("{not json")
    rebuilt = Encoder(folder, backend="openvino-int8")
    assert rebuilt.backend.name == "openvino-int8" and xml.stat().st_mtime_ns != stamp
    assert_close_to_torch("openvino-int8", rebuilt.encode(ZH), want)
    assert json.loads((xml.parent / "meta.json").read_text())["bytes"] == [xml.stat().st_size, weights.stat().st_size]


def test_int8_without_nncf_is_refused_by_name(tiny_zh, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def version(package):
        if package == "nncf":
            raise importlib.metadata.PackageNotFoundError(package)
        return real(package)
    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(ValueError, match="needs the openvino and nncf packages"):
        Encoder(tiny_zh, backend="openvino-int8")


def test_content_hash_is_remembered_by_path_size_and_mtime(tmp_path, chinese_vocab):
    folder = save_tiny_bert(tmp_path / "m", chinese_vocab, seed=5)
    first = export_cache.model_content_hash(folder)
    index = json.loads((export_cache.cache_root() / "content-hashes.json").read_text())
    assert any(k.startswith(str((folder / "model.safetensors").resolve())) for k in index)
    assert export_cache.model_content_hash(folder) == first
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert export_cache.model_content_hash(copy) == first  # content, not path, names the model


def test_load_meter_tells_other_processes_cpu_from_ours():
    # A child process burns 1 s of CPU and this process 0.3 s inside one meter: the child counts as "others",
    # our own work as ours. Bounds only from below: anything else running on the machine adds to "others".
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < {}: pass"
    with Meter() as m:
        subprocess.run([sys.executable, "-c", burn.format(1.0)], check=True)
        exec(burn.format(0.3))
    assert m.sample.own_cpu >= 0.29
    assert m.sample.others_cpu >= 0.5  # /proc/stat is sampled per clock tick: a wide margin below 1.0
    assert m.sample.wall >= m.sample.own_cpu / os.cpu_count()


def expected_choice(timed: dict, key: str, higher: bool) -> str:
    """The rule, restated: the best timed backend, unless it is approximate and beats the best exact one by less
    than the margin."""
    from bertserve.encode.backends.selection import APPROXIMATE_MARGIN

    def score(name):
        return timed[name][key] if higher else 1 / timed[name][key]
    best, best_exact = max(timed, key=score), max((n for n in timed if n in EXACT), key=score)
    return best if best in EXACT or score(best) >= APPROXIMATE_MARGIN * score(best_exact) else best_exact


def test_auto_routes_small_batches_to_the_latency_backend_and_bulk_to_the_throughput_one(tiny_english_bert):
    from bertserve.encode.backends.selection import (EXACT_CANDIDATES, INT8_AVAILABLE, LATENCY_MAX_TOKENS,
                                                     SAMPLE_MAX_LEN)

    enc = Encoder(tiny_english_bert, backend="auto", auto_sample=60)
    choice = enc.backend_choice
    assert enc.config.backend == "auto" and enc.backend.name == choice["backend"]
    timed = choice["timings"]  # each candidate timed here: the choice follows from these figures
    assert set(EXACT_CANDIDATES) <= set(timed)  # torch, onnx, and openvino where it is installed
    # approximate candidates: bf16 only where the CPU has it, openvino-int8 where NNCF is installed; each is
    # checked against the gate and timed only when it passes
    assert ("bf16" in choice["quality"]) == native_bf16()
    assert ("openvino-int8" in choice["quality"]) == INT8_AVAILABLE
    assert set(timed) == set(EXACT_CANDIDATES) | {n for n, c in choice["quality"].items() if c["passed"]}
    assert choice["latency"] == expected_choice(timed, "single_ms", higher=False)
    assert choice["throughput"] == expected_choice(timed, "bulk_per_s", higher=True)
    assert choice["cpu"]["avx512_bf16"] == ("avx512_bf16" in open("/proc/cpuinfo").read())  # read, not assumed
    approximate_chosen = {choice["latency"], choice["throughput"]} - set(EXACT)
    if approximate_chosen and enc.checkpoint.model_max_len > SAMPLE_MAX_LEN:
        # long texts: the approximate backends that passed are checked again on long texts; the eligible are timed
        assert set(choice["long_quality"]) == {n for n in timed if n not in EXACT}
        assert set(choice["long_timings"]) == set(EXACT_CANDIDATES) | {
            n for n, c in choice["long_quality"].items() if c["passed"]}
        assert choice["long"] == expected_choice(choice["long_timings"], "long_per_s", True)
    else:
        assert choice["long"] is None and not choice["long_timings"]
    # within the checked length (SAMPLE_MAX_LEN): by padded size; longer: the exact `long` backend when set
    rows = LATENCY_MAX_TOKENS // SAMPLE_MAX_LEN
    assert enc.backend.pick(torch.ones(rows, SAMPLE_MAX_LEN, dtype=torch.long)).name == choice["latency"]
    assert enc.backend.pick(torch.ones(rows + 1, SAMPLE_MAX_LEN, dtype=torch.long)).name == choice["throughput"]
    beyond = enc.backend.pick(torch.ones(1, SAMPLE_MAX_LEN + 1, dtype=torch.long)).name
    assert beyond == (choice["long"] or choice["latency"])
    want = Encoder(tiny_english_bert, backend="torch").encode(EN)
    one_floor = EXACT_MIN_COSINE if choice["latency"] in EXACT else APPROXIMATE[choice["latency"]][1]
    assert row_cosines(enc.encode(EN[:1]), want[:1]).min() >= one_floor  # one sentence: the latency backend
    q = measure_quality(np.vstack([want] * 20), enc.encode(EN * 20))  # bulk
    assert q.mean_cosine >= 0.995 and q.min_cosine >= 0.98
    again = Encoder(tiny_english_bert, backend="auto", auto_sample=60)
    assert again._auto.done.is_set() and again.backend_choice == choice  # read back from the cache
    assert again.info()["backend"] == choice["backend"]


def test_long_role_checks_approximate_backends_again_on_long_texts():
    """Approximate backends that passed on sentences are checked again on texts of the model's full length; only
    those passing there too (and the exact ones) are timed for the long role."""
    from bertserve.encode.backends.sample import english_sentences
    from bertserve.encode.backends.selection import LONG_CHECK_TEXTS, _build, _long_batches, _long_role

    enc = Encoder(backend="torch")  # the default model: 512 positions
    batches = _long_batches(enc, english_sentences(120, offset=400))
    assert sum(len(b[0]) for b in batches) == LONG_CHECK_TEXTS and all(b[0].shape[1] == 512 for b in batches)
    assert len({tuple(b[0][0, 1:20].tolist()) for b in batches}) == len(batches)  # different texts
    ready = {n: _build(enc, n) for n in ("torch", "onnx", "onnx-int8")}
    strict = QualityGate(mean_cosine=0.99999, min_cosine=0.9999, top10_overlap=1.0)  # int8 cannot pass this
    checks, timings = _long_role(enc, ready, ["torch", "onnx", "onnx-int8"], batches, strict)
    assert set(checks) == {"onnx-int8"} and not checks["onnx-int8"]["passed"]
    assert 0.9 < checks["onnx-int8"]["mean_cosine"] < 0.99999
    assert set(timings) == {"torch", "onnx"} and all(t["long_per_s"] > 0 for t in timings.values())


def test_batches_longer_than_the_checked_sample_go_to_the_long_backend():
    """The gate checks approximate backends on sentences of up to SAMPLE_MAX_LEN tokens; longer batches go to
    the long backend (here an exact one), built once, on the first of them."""
    from bertserve.encode.backends.selection import SAMPLE_MAX_LEN, RoutedBackend

    approximate = Encoder(backend="onnx-int8").backend  # the default model: 512 positions
    built = []

    def exact():
        built.append(Encoder(backend="torch").backend)
        return built[-1]
    routed = RoutedBackend(approximate, approximate, long=exact)
    assert routed.pick(torch.ones(1, 12, dtype=torch.long)) is approximate and not built  # nothing built early
    assert routed.pick(torch.ones(32, SAMPLE_MAX_LEN, dtype=torch.long)) is approximate
    assert routed.pick(torch.ones(1, SAMPLE_MAX_LEN + 1, dtype=torch.long)) is built[0]
    assert routed.pick(torch.ones(8, 400, dtype=torch.long)) is built[0] and len(built) == 1
    ids = torch.randint(1000, 2000, (2, SAMPLE_MAX_LEN + 20))
    mask = torch.ones_like(ids)
    got, _ = routed.forward(ids, mask, None)
    want, _ = built[0].forward(ids, mask, None)
    assert all(torch.equal(got[i], want[i]) for i in want)  # exactly the exact backend's output


def test_auto_serves_at_once_and_decides_per_model_and_layers_not_per_pooling(tmp_path):
    model = save_tiny_bert(tmp_path / "model", default_model_path() / "vocab.txt", layers=3, seed=7)  # a fresh decision
    first = Encoder(model, backend="auto", auto_sample=60)
    twin = Encoder(model, backend="auto", auto_sample=60, pooling="REDUCE_MAX")  # joins (or reads) that decision
    # usable before the decision is made: it starts on the exact backend (or has already switched)
    exact = Encoder(model, backend="torch").encode(EN)
    assert row_cosines(first.encode(EN), exact).min() >= 0.98
    choice = first.wait_for_backend()
    assert twin.wait_for_backend() == choice and twin.backend.name == choice["backend"]
    assert first.backend.name == choice["backend"] and first.info()["auto_choice"]["backend"] == choice["backend"]
    # other pooling, normalization, max_seq_len and mask_cls_sep over the same layers: the decision is read back,
    # before the constructor returns, with nothing checked again
    for options in ({"pooling": "REDUCE_MAX"}, {"pooling": "CLS_TOKEN", "normalize": True},
                    {"max_seq_len": 32, "mask_cls_sep": True}):
        other = Encoder(model, backend="auto", auto_sample=60, **options)
        assert other._auto.done.is_set() and other.backend_choice == choice, options
        assert other.backend.name == choice["backend"]
    # another set of exposed layers is another backend (another export): decided on its own
    deeper = Encoder(model, backend="auto", auto_sample=60, layers=(-2,))
    assert deeper.wait_for_backend()["entry"] != choice["entry"]


def test_auto_stays_exact_when_no_approximate_backend_passes_the_gate(tiny_english_bert):
    impossible = QualityGate(mean_cosine=1.0, min_cosine=1.0, top10_overlap=1.0)  # only exact backends reach it
    enc = Encoder(tiny_english_bert, backend="auto", auto_sample=60, auto_gate=impossible, pooling="CLS_TOKEN")
    choice = enc.backend_choice
    assert {choice["latency"], choice["throughput"]} <= set(EXACT) and set(choice["timings"]) <= set(EXACT)
    assert all(not c["passed"] for c in choice["quality"].values())
    want = Encoder(tiny_english_bert, backend="torch", pooling="CLS_TOKEN").encode(EN * 20)
    assert row_cosines(enc.encode(EN * 20), want).min() >= EXACT_MIN_COSINE


def test_default_backend_is_auto_and_bad_choices_are_refused(tiny_english_bert, monkeypatch):
    from bertserve.encode.config import EncoderConfig

    monkeypatch.delenv("BERTSERVE_BACKEND")
    assert EncoderConfig().backend == "auto"
    monkeypatch.setenv("BERTSERVE_BACKEND", "onnx")
    assert EncoderConfig().backend == "onnx" and Encoder(tiny_english_bert).backend.name == "onnx"
    assert EncoderConfig(backend="torch").backend == "torch"
    with pytest.raises(ValueError, match="onnx-int8"):
        Encoder(tiny_english_bert, backend="tensorrt")
    with pytest.raises(ValueError, match="auto_sample"):
        Encoder(tiny_english_bert, backend="auto", auto_sample=3)
    with pytest.raises(ValueError, match="auto_gate"):
        Encoder(tiny_english_bert, auto_gate=0.99)
    cfg = EncoderConfig.from_dict({"backend": "auto", "auto_gate": {"mean_cosine": 0.9}})
    assert cfg.auto_gate == QualityGate(mean_cosine=0.9)


def test_cli_backend_flag(tiny_english_bert):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "bertserve.cli", "encode", "--model", str(tiny_english_bert),
                               *args], capture_output=True, text=True, timeout=300, env=os.environ)
    out = run("hello world", "--backend", "onnx")
    assert out.returncode == 0, out.stderr
    got = np.array(json.loads(out.stdout.splitlines()[0])["vector"], dtype=np.float32)
    want = Encoder(tiny_english_bert, backend="torch").encode(["hello world"])[0]
    assert row_cosines(got, want) >= EXACT_MIN_COSINE
    bad = run("x", "--backend", "gpu")
    assert bad.returncode == 2 and "onnx-int8" in bad.stderr


def test_encoders_with_different_depths_in_one_process_stay_exact(tmp_path, chinese_vocab):
    """A shallow Encoder built before a full-depth one must not make the model record hidden states twice."""
    from transformers import AutoModel, AutoTokenizer

    folder = save_tiny_bert(tmp_path / "m", chinese_vocab, layers=3, seed=6)
    shallow = Encoder(folder, backend="torch", layers=(-2,), pooling="CLS_TOKEN")
    shallow.encode(ZH[:1])
    full = Encoder(folder, backend="torch", layers=(1, -1), pooling="CLS_TOKEN", checkpoint=shallow.checkpoint)
    tokenizer, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        states = model(**tokenizer(ZH[0], return_tensors="pt"), output_hidden_states=True).hidden_states
    want = torch.cat([states[1][0, 0], states[3][0, 0]]).numpy()
    np.testing.assert_allclose(full.encode(ZH[:1])[0], want, atol=1e-5)
    np.testing.assert_allclose(shallow.encode(ZH[:1])[0], states[2][0, 0].numpy(), atol=1e-5)


def test_benchmark_records_name_the_cpu_features_read_off_the_machine():
    from bertserve.machine_load import VECTOR_FEATURES, cpu_flags, describe_machine
    described, flags = describe_machine(), cpu_flags()
    for feature in VECTOR_FEATURES:  # each named exactly when /proc/cpuinfo lists it
        assert (f" {feature}" in described or f"({feature}" in described) == (feature in flags)
    assert ("no AMX" in described) == ("amx_bf16" not in flags)
