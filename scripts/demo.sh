#!/usr/bin/env bash
# Set everything up, then train one MNIST FCN with backprop, DNI and cDNI side by side (a few minutes on 2 CPU
# cores) and print the comparison. Extra arguments go to `synthgrad demo` (e.g. --data-dir DIR --epochs 5).
# Data: --data-dir, else $SYNTHGRAD_DATA_DIR, else ../shared/data beside the checkout, else downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${SYNTHGRAD_DATA_DIR:-}" ] && [ -d ../shared/data/mnist ]; then
    export SYNTHGRAD_DATA_DIR="$(cd ../shared/data && pwd)"
fi
exec .venv/bin/synthgrad demo "$@"
