#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs
# everything the recipe needs: Debian packages (TTS engines, sox, text corpora,
# build tools), the pinned Python requirements, and fast_rnnt built from its
# PyPI sdist.  Running it twice does no work twice: each step checks first.
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
# fast_rnnt 1.3 ships only as an sdist.  Its CMake fetches pybind11 from
# GitHub (unreachable here), so we point FetchContent at a directory whose
# CMakeLists.txt finds the pybind11 that pip installed.
if ! "$venv/bin/python" -c "import fast_rnnt" 2>/dev/null; then
  wheel_dir="$cache_dir/wheels"
  mkdir -p "$wheel_dir"
  if ! ls "$wheel_dir"/fast_rnnt-1.3-*.whl >/dev/null 2>&1; then
    log "building fast_rnnt 1.3 from source (about a minute)"
    shim="$cache_dir/pybind11-shim"
    mkdir -p "$shim"
    pybind11_cmake_dir=$("$venv/bin/python" -m pybind11 --cmakedir)
    cat > "$shim/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.24)
project(pybind11_shim)
set(CMAKE_FIND_PACKAGE_TARGETS_GLOBAL ON)
find_package(pybind11 CONFIG REQUIRED PATHS "$pybind11_cmake_dir" NO_DEFAULT_PATH)
CMAKE
    with_cuda=$("$venv/bin/python" -c "import torch; print('ON' if torch.version.cuda else 'OFF')")
    export FT_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DFT_BUILD_TESTS=OFF -DFT_WITH_CUDA=$with_cuda -DCMAKE_CXX_STANDARD=17 -DFETCHCONTENT_SOURCE_DIR_PYBIND11=$shim -DFETCHCONTENT_FULLY_DISCONNECTED=ON -DPYTHON_EXECUTABLE=$venv/bin/python"
    export FT_MAKE_ARGS="-j$(nproc)"
    "${pip[@]}" wheel --no-build-isolation --no-deps -w "$wheel_dir" fast_rnnt==1.3
  fi
  "${pip[@]}" install --no-deps "$wheel_dir"/fast_rnnt-1.3-*.whl
  "$venv/bin/python" -c "import fast_rnnt" || { echo "setup: fast_rnnt was built but does not import" >&2; exit 1; }
fi
log "environment ready: $venv"
