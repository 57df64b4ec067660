"""What a running server is made of, and the config/status reports both front-ends give out."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

import bertserve
from bertserve.encode.config import STRATEGIES as POOLING_STRATEGIES
from bertserve.engine.batcher import Batcher
from bertserve.serve.config import BERT_AS_SERVICE_VERSION, ServerConfig
from bertserve.engine.metrics import Metrics
from bertserve.errors import NotFound

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"  # what the bundled default checkpoint is


def _plain(value):
    """Enum, Path and tuple values as JSON-friendly scalars and lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return getattr(value, "name", None) or str(value)


@dataclass
class ServerState:
    config: ServerConfig
    encoder: object
    batcher: Batcher
    metrics: Metrics
    started_at: float = field(default_factory=time.time)
    plugins: list = field(default_factory=list)    # bertserve.serve.plugins.Plugin, in load order
    extra_models: dict = field(default_factory=dict)  # served name -> ServedModel, beside the main one
    batchers: list = field(default_factory=list)   # every engine's batcher, the encode one first

    @property
    def model_name(self) -> str:
        if self.config.served_model_name:
            return self.config.served_model_name
        name = getattr(getattr(self.encoder, "checkpoint", None), "name", None)  # a registered model's name
        if name:
            return name
        if self.config.encoder.model is None:
            return DEFAULT_MODEL_NAME
        return Path(self.config.encoder.model).resolve().name

    @property
    def main(self) -> "ServedModel":
        return ServedModel(self.model_name, self.encoder, self.batcher)

    @property
    def models(self) -> list["ServedModel"]:
        """Every served encode model, the main (first) one first."""
        return [self.main, *self.extra_models.values()]

    def served(self, name: str | None) -> "ServedModel":
        """The model a request names (OpenAI `model`). None: the main one. A server with one model answers every
        name with it (clients send whatever their code says); with several, an unknown name is a 404."""
        if name is None or not self.extra_models or name == self.model_name:
            return self.main
        if name in self.extra_models:
            return self.extra_models[name]
        for m in self.models:  # the registered name or folder name also works beside an alias
            if name in (m.encoder.name, str(m.encoder.checkpoint.path)):
                return m
        raise NotFound(f"model {name!r} is not served here; served models: "
                       f"{', '.join(m.name for m in self.models)}")

    @property
    def zmq_model(self) -> "ServedModel":
        return self.served(self.config.zmq_model)

    @property
    def pools_per_token(self) -> bool:
        """Pooling NONE: (n, L, d) token vectors, no single vector per text."""
        return str(_plain(self.encoder.config.pooling)).upper() == "NONE"

    def server_config(self) -> dict:
        """bert-as-service's SHOW_CONFIG: its client reads server_version, max_seq_len, show_tokens_to_client."""
        enc = self.encoder
        cfg = self.config.public_dict()
        cfg.update(
            server_version=BERT_AS_SERVICE_VERSION,
            bertserve_version=getattr(bertserve, "__version__", "unknown"),
            python_version=platform.python_version(),
            pyzmq_version=zmq.pyzmq_version(),
            zmq_version=zmq.zmq_version(),
            server_start_time=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at)),
            model_dir=str(getattr(enc.checkpoint, "path", "")),
            model_name=self.model_name,
            max_seq_len=enc.max_seq_len,
            dim=enc.dim,
            pooling_strategy=_plain(enc.config.pooling),
            pooling_layer=_plain(enc.config.layers),
            normalize=_plain(enc.config.normalize),
            backend=getattr(enc.backend, "name", None),  # what `auto` chose, where it was asked for
            prompts=dict(getattr(enc.checkpoint, "prompts", {}) or {}),
            default_prompt=getattr(enc.config, "prompt", None),
            request_options=list(enc.request_options),  # per-request overrides /encode accepts for this model
            poolings=list(POOLING_STRATEGIES) if "pooling" in enc.request_options else [],
        )
        return cfg

    def server_status(self) -> dict:
        """bert-as-service's SHOW_STATUS: the config plus what the server has done so far."""
        status = self.server_config()
        stats = self.metrics.snapshot(self.encoder.kind)
        served = {"encode": {**self.encoder.describe(), "name": self.model_name},
                  **{p.name: p.describe() for p in self.plugins}}
        for desc in served.values():
            desc["statistic"] = stats["engines"].get(desc.get("kind"), {})
        by_label = stats["engines"]
        stats["engines"] = served
        status["models"] = {m.name: {**m.encoder.describe(), "name": m.name, "memory_mib": m.memory_mib(),
                                     "statistic": by_label.get(m.batcher.kind, {})} for m in self.models}
        status.update(stats)
        status["statistic"] = stats
        # texts mostly [UNK] for the model: a sign that it does not cover their language
        status["unknown_token_texts"] = getattr(self.encoder, "unknown_texts", 0)
        ranges = getattr(self.encoder, "calibrated_ranges", None)  # int8/uint8 calibration, once a request asked for it
        status["quantization_ranges"] = None if ranges is None else ranges.tolist()
        status["server_current_time"] = time.strftime("%Y-%m-%d %H:%M:%S")
        return status


@dataclass
class ServedModel:
    """One encode model of the server: its name as clients say it, its Encoder and its own Batcher."""
    name: str
    encoder: object
    batcher: Batcher

    def memory_mib(self) -> float:
        """The model's weights in memory (parameters and buffers)."""
        model = self.encoder.checkpoint.model
        tensors = list(model.parameters()) + list(model.buffers())
        return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)
