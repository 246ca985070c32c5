#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs
# everything the recipe needs: Debian packages (TTS engines, sox, text corpora,
# build tools), the pinned Python requirements, and fast_rnnt built from its
# PyPI sdist (with CUDA when torch is a CUDA build: docs/gpu.md).  Running it twice does no work twice: each step checks first.
#
# Usage: shared/setup.sh        (from the project root; CI and run.sh call it)
set -euo pipefail

project_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$project_dir/.venv"
cache_dir="$project_dir/.cache"
python_bin=${PYTHON:-python3}

log() { echo "[setup $(date +%H:%M:%S)] $*"; }

# ---------------------------------------------------------------- Debian ----
debian_packages=(sox libsox-fmt-all flite espeak-ng festival festvox-kallpc16k
  festvox-kdlpc16k festvox-us-slt-hts wordnet-base fortunes bible-kjv-text
  cmake g++ chromium chromium-driver)
missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- venv ------
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# A GPU machine: PyPI's Linux torch wheels are CUDA builds; TORCH_INDEX_URL
# (e.g. https://download.pytorch.org/whl/cu128) installs the pinned torch from
# another index first, and the requirements keep it (2.13.0+cu128 satisfies
# torch==2.13.0).  See docs/gpu.md.
if [ -n "${TORCH_INDEX_URL:-}" ] && ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  torch_pin=$(grep -E '^torch==' "$project_dir/requirements.txt")
  log "installing $torch_pin from $TORCH_INDEX_URL"
  "${pip[@]}" install "$torch_pin" --index-url "$TORCH_INDEX_URL"
fi

requirements_stamp="$venv/.requirements.sha256"
requirements_hash=$(sha256sum "$project_dir/requirements.txt" "$project_dir/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$requirements_stamp" 2>/dev/null)" != "$requirements_hash" ]; then
  log "installing Python requirements (torch CPU build pinned with the rest)"
  "${pip[@]}" install -r "$project_dir/requirements.txt"
  # Editable install: puts the project root on sys.path so that
  # ./pruned_transducer_stateless4/train.py imports `shared` and `local`
  # without PYTHONPATH.
  "${pip[@]}" install --no-deps --no-build-isolation -e "$project_dir"
  echo "$requirements_hash" > "$requirements_stamp"
fi

# ---------------------------------------------------------------- fast_rnnt -
# fast_rnnt 1.3 ships only as an sdist: shared/build_fast_rnnt.py compiles its
# extension with torch.utils.cpp_extension against the installed torch (CUDA
# kernels when torch is a CUDA build and an nvcc is found; no CMake, no make),
# caches the wheel in .cache/wheels/fast_rnnt-1.3/KEY (KEY: torch and CUDA
# versions, architectures, Python), checks its loss against
# shared/rnnt_reference.py before installing it, and does nothing when the
# installed build has that KEY and suits this torch.  Exit status 2: no CUDA
# build (it said why in one line); set-up goes on and the RNN-T loss uses
# another backend.
fast_rnnt_status=0
"$project_dir/shared/build_fast_rnnt.sh" "$venv/bin/python" "$cache_dir" || fast_rnnt_status=$?
if [ "$fast_rnnt_status" -ne 0 ] && [ "$fast_rnnt_status" -ne 2 ]; then exit "$fast_rnnt_status"; fi
rm -f "$venv/.fast_rnnt-built-for"  # the CMake build's stamp; the wheel records its KEY now
log "environment ready: $venv"
