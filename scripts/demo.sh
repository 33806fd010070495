#!/usr/bin/env bash
# Set everything up, then train one MNIST FCN with backprop, DNI and cDNI side by side (a few minutes on 2 CPU
# cores) and print the comparison. Extra arguments go to `synthgrad demo` (e.g. --data-dir DIR --epochs 5).
# Data: --data-dir, else $SYNTHGRAD_DATA_DIR, else ../shared/data beside the checkout, else ~/.cache/synthgrad/data
# (`--download` fetches it there): the lookup of every entry point, `synthgrad.data.resolve_data_dir`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
status=0
.venv/bin/synthgrad demo "$@" || status=$?
if [ "$status" -eq 0 ]; then
    echo "The synthgrad command is in .venv: run 'source .venv/bin/activate' in this shell, then 'synthgrad --help'."
fi
exit "$status"
