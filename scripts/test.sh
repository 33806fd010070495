#!/usr/bin/env bash
# Set everything up, then lint and run the test suite. Extra arguments go to pytest (e.g. --runslow, -k oracle).
# Tests on real data find it as every entry point does (`synthgrad.data.resolve_data_dir`): $SYNTHGRAD_DATA_DIR,
# else ../shared/data beside the checkout, else ~/.cache/synthgrad/data; without it they skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
exec .venv/bin/python -m pytest "$@"
