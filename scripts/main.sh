#!/usr/bin/env bash
# README command 1: install, then run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0 -e .
mobilenets models
mobilenets profile mobilenet_v2 --resolution 224
