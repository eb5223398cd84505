#!/usr/bin/env bash
# Install the project with its test extras and run the whole suite (README command 2).
# torch is pinned to the machine's local CPU wheel in pyproject.toml; nothing here may resolve another torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || echo "note: dataset-fashion-mnist not installed; tests that need it skip"
fi
# The export runtimes (tflite: litert-torch + ai-edge-litert, ~1 GB with jax, ~30 s from a warm cache; openvino) so
# that every export format is tested; litert-torch depends on torch, hence the pin as a constraint too.
python3 -m pip install -q -c <(echo torch==2.13.0) torch==2.13.0 -e ".[test,tflite,openvino]"
python3 -m ruff check src tests
python3 -m pytest -q -p no:cacheprovider "$@"
