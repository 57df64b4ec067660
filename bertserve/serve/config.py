"""ServerConfig: every setting of `bertserve serve`, readable from a JSON or TOML file and from flags.

The encoder's own options stay in EncoderConfig (one place for their defaults); ServerConfig holds one.
A config file may give them flat (`pooling = "REDUCE_MEAN"`) or in an `encoder` table. The CLI passes
only the flags a user typed, so a value from --config survives unless a flag overrides it.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertserve.encode.config import EncoderConfig
from bertserve.errors import BadInput

# bert-serving-client refuses a server whose version differs from its own unless check_version=False,
# so the ZeroMQ front-end reports the protocol version it speaks, not bertserve's own version.
BERT_AS_SERVICE_VERSION = "1.10.0"
ENCODER_FIELDS = frozenset(f.name for f in dataclasses.fields(EncoderConfig))
PORT_FIELDS = ("http_port", "port", "port_out")
POSITIVE_FIELDS = ("num_worker", "max_batch_tokens", "max_queue_texts", "max_request_texts", "max_payload_bytes")


@dataclass
class ServerConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # network
    host: str = "127.0.0.1"
    http_port: int = 8000
    port: int = 5555
    port_out: int = 5556
    zmq: bool = True
    http: bool = True
    api_key: str | None = None
    cors: tuple[str, ...] = ()
    show_tokens_to_client: bool = False
    served_model_name: str | None = None
    data_dir: str | None = None   # folder of search collections, served under /collections
    classifier: str | None = None  # classifier folder (bertserve finetune/distill output), served under /classify
    # batching and limits
    num_worker: int = 1
    max_batch_tokens: int = 4096
    max_queue_texts: int = 16384
    max_request_texts: int = 4096
    max_payload_bytes: int = 32 * 1024 * 1024
    # OpenAI `dimensions` truncates vectors; only models trained for it (Matryoshka) keep their meaning.
    allow_dimensions: bool = False
    shutdown_timeout: float = 30.0

    def __post_init__(self):
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig.from_dict(self.encoder)
        if isinstance(self.cors, str):
            self.cors = self.cors.split(",")
        self.cors = tuple(c.strip() for c in self.cors if c and c.strip())
        for name in PORT_FIELDS + POSITIVE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadInput(f"server config: {name} must be an integer, got {value!r}")
            low = 0 if name in PORT_FIELDS else 1
            if not low <= value <= (65535 if name in PORT_FIELDS else value):
                raise BadInput(f"server config: {name} out of range: {value}")
        if self.zmq and self.port and self.port == self.port_out:
            raise BadInput(f"server config: port and port_out must differ (both {self.port})")
        if self.max_request_texts > self.max_queue_texts:
            raise BadInput("server config: max_request_texts cannot exceed max_queue_texts "
                             f"({self.max_request_texts} > {self.max_queue_texts})")
        if not (self.zmq or self.http):
            raise BadInput("server config: both the HTTP and the ZeroMQ front-end are switched off")
        if self.shutdown_timeout < 0:
            raise BadInput(f"server config: shutdown_timeout must be >= 0, got {self.shutdown_timeout}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServerConfig":
        data = {k.replace("-", "_"): v for k, v in data.items()}
        encoder = dict(data.pop("encoder", None) or {})
        encoder.update({k: data.pop(k) for k in list(data) if k in ENCODER_FIELDS})
        if isinstance(encoder.get("max_seq_len"), str) and encoder["max_seq_len"].lower() in ("none", "null"):
            encoder["max_seq_len"] = None  # TOML has no null
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInput(f"server config: unknown setting(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known | ENCODER_FIELDS - {'encoder'}))}")
        return cls(encoder=EncoderConfig.from_dict({k.replace("-", "_"): v for k, v in encoder.items()}), **data)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "ServerConfig":
        """Read a .toml or .json file, then apply `overrides` (flat keys, as from the command line) on top."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise BadInput(f"server config: cannot read {path}: {e.strerror}") from e
        try:
            data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
            raise BadInput(f"server config: {path} is not valid {kind}: {e}") from e
        if not isinstance(data, dict):
            raise BadInput(f"server config: {path} must hold a table/object of settings")
        data = data.get("serve", data)  # a [serve] table lets one file carry several commands' settings
        return cls.from_dict({**data, **overrides})

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to show to any client: the API key is never echoed."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "encoder"}
        out["api_key"] = "***" if self.api_key else None
        out["cors"] = list(self.cors)
        out["encoder"] = self.encoder.to_dict()
        return out
