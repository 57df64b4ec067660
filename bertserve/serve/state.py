"""What a running server is made of, and the config/status reports both front-ends give out."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

import bertserve
from bertserve.engine.batcher import Batcher
from bertserve.serve.config import BERT_AS_SERVICE_VERSION, ServerConfig
from bertserve.engine.metrics import Metrics

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
    batchers: list = field(default_factory=list)   # every engine's batcher, the encode one first

    @property
    def model_name(self) -> str:
        if self.config.served_model_name:
            return self.config.served_model_name
        if self.config.encoder.model is None:
            return DEFAULT_MODEL_NAME
        return Path(self.config.encoder.model).resolve().name

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
        stats["engines"] = served
        status.update(stats)
        status["statistic"] = stats
        status["server_current_time"] = time.strftime("%Y-%m-%d %H:%M:%S")
        return status
