#!/usr/bin/env bash
# The main job: set up (or refresh) .venv, then serve the bundled default model on 127.0.0.1:
# HTTP on :8000 (/encode, /v1/embeddings, /status, /metrics, /docs) and bert-as-service's ZeroMQ protocol
# on :5555/:5556. Extra arguments go to `bertserve serve` (see `bertserve serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/bertserve serve "$@"
