#!/usr/bin/env bash
# Set everything up, then lint and run the test suite. Extra arguments go to pytest (e.g. --runslow, -k oracle).
# Tests on real data find it through $SYNTHGRAD_DATA_DIR, else ../shared/data beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${SYNTHGRAD_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    export SYNTHGRAD_DATA_DIR="$(cd ../shared/data && pwd)"
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
exec .venv/bin/python -m pytest "$@"
