#!/usr/bin/env bash
# Set up .venv with PyTorch 2.13.0 (CPU build) and synthgrad (editable, with dev tools). Idempotent: a second
# run only checks. PYTHON picks the interpreter (default python3, >= 3.10).
#
# torch is installed first and pinned, so nothing later can pull another (CUDA) build. Where PyPI would hand out
# a CUDA build, set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
stamp=.venv/.synthgrad-setup
want="torch=$TORCH_VERSION $(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import synthgrad, torch" 2>/dev/null; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_args=(-q --disable-pip-version-check)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/python -m pip install "${pip_args[@]}" --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
else
    .venv/bin/python -m pip install "${pip_args[@]}" "torch==$TORCH_VERSION"
fi
.venv/bin/python -m pip install "${pip_args[@]}" -e ".[dev]"
.venv/bin/python -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
echo "$want" > "$stamp"
echo "synthgrad set up in .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
echo "To use the synthgrad command in this shell: source .venv/bin/activate   (then: synthgrad --help)"
