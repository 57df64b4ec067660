#!/usr/bin/env bash
# The main job: set up (or refresh) .venv, then encode example sentences with the bundled default model and
# print their vectors' shape and pairwise similarities.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python - "$@" <<'PY'
from bertserve import Encoder

texts = ["The cat sits on the mat.", "A cat is resting on a rug.", "Stock markets fell sharply today.",
         "How is the weather in Beijing? ||| Is it raining in Beijing?"]
encoder = Encoder()
vectors = encoder.encode(texts)
print(f"model: {encoder.config.model}\npooling: {encoder.config.pooling}, normalize: {encoder.config.normalize}")
print(f"vectors: shape {vectors.shape}, dtype {vectors.dtype}")
sims = vectors @ vectors.T
for i, text in enumerate(texts):
    print(f"{i}: {text}")
print("cosine similarities:\n    " + "".join(f"{j:>7}" for j in range(len(texts))))
for i, row in enumerate(sims):
    print(f"{i:>4}" + "".join(f"{s:7.3f}" for s in row))
PY
