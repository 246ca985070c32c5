#!/usr/bin/env bash
# Builds (or reuses) a fast_rnnt 1.3 wheel that matches the torch of PYTHON,
# with CUDA kernels when that torch is a CUDA build, and installs it.
#
#   shared/build_fast_rnnt.sh PYTHON CACHE_DIR [SDIST] [--target SITE_DIR]
#
# - The wheel is cached under CACHE_DIR/wheels/fast_rnnt-1.3/KEY/, KEY =
#   torch-<torch version>-cuda-<CUDA version>-sm_<archs> (cuda-none for a CPU
#   torch)-<python tag>: a wheel
#   built against a CPU torch is never reused for a CUDA torch (nor across
#   torch or Python versions), since its extension links that torch's ABI.
# - SDIST: a fast_rnnt-1.3.tar.gz to build from (an offline machine);
#   default: pip downloads it from PyPI.
# - --target SITE_DIR: install by unpacking the wheel into SITE_DIR (put it
#   on PYTHONPATH) instead of pip-installing it into PYTHON's environment
#   (tools/gpu_check.sh, which must leave the machine's venv alone).
# - CUDA architectures: FT_CUDA_ARCHS ("90" or "80,90") if set, else those of
#   the GPUs torch sees, else the sm_XX of torch.cuda.get_arch_list().
#   fast_rnnt's CMake only knows archs 35-86 and falls back to all of them,
#   including compute_35, which CUDA 12+ nvcc rejects: the script replaces that
#   list in the unpacked sdist.
# - Its CMake fetches pybind11 from GitHub; a shim directory makes it use the
#   pybind11 that pip installed (FETCHCONTENT_SOURCE_DIR_PYBIND11).
set -euo pipefail

python_bin=$1
cache_dir=$2
sdist=${3:-}
target=""
if [ "${4:-}" = "--target" ]; then target=${5:?--target needs a directory}; fi

log() { echo "[fast_rnnt $(date +%H:%M:%S)] $*"; }

with_cuda=$("$python_bin" -c "import torch; print('ON' if torch.version.cuda else 'OFF')")
archs=""
if [ "$with_cuda" = ON ]; then
  archs=${FT_CUDA_ARCHS:-$("$python_bin" -c "
import torch
caps = sorted({'%d%d' % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
if not caps:
    caps = sorted({a[3:] for a in torch.cuda.get_arch_list() if a.startswith('sm_')}, key=int)
print(','.join(caps))")}
  archs=${archs//;/,}
  [ -n "$archs" ] || { echo "build_fast_rnnt: no CUDA architecture found; set FT_CUDA_ARCHS" >&2; exit 1; }
fi
key=$("$python_bin" -c "
import sys, torch
cuda = f'cuda-{torch.version.cuda}-sm_{sys.argv[1].replace(\",\", \"_\")}' if torch.version.cuda else 'cuda-none'
print(f'torch-{torch.__version__}-{cuda}-cp{sys.version_info.major}{sys.version_info.minor}')" "$archs")
wheel_dir="$cache_dir/wheels/fast_rnnt-1.3/$key"
mkdir -p "$wheel_dir"

if ! ls "$wheel_dir"/fast_rnnt-1.3-*.whl >/dev/null 2>&1; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if [ -z "$sdist" ]; then
    "$python_bin" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
      fast_rnnt==1.3 -d "$work"
    sdist="$work/fast_rnnt-1.3.tar.gz"
  fi
  tar xzf "$sdist" -C "$work"
  src="$work/fast_rnnt-1.3"
  cmake_args="-DCMAKE_BUILD_TYPE=Release -DFT_BUILD_TESTS=OFF -DFT_WITH_CUDA=$with_cuda"
  if [ "$with_cuda" = ON ]; then
    # fast_rnnt's CMake enables CUDA only if it finds nvcc on PATH (or CUDACXX).
    nvcc=$(command -v nvcc || true)
    for candidate in "${CUDACXX:-}" "${CUDA_HOME:-/nonexistent}/bin/nvcc" /usr/local/cuda/bin/nvcc; do
      if [ -z "$nvcc" ] && [ -n "$candidate" ] && [ -x "$candidate" ]; then nvcc=$candidate; fi
    done
    [ -n "$nvcc" ] || { echo "build_fast_rnnt: torch is a CUDA build but no nvcc was found (set CUDACXX)" >&2; exit 1; }
    export CUDACXX=$nvcc PATH="$(dirname "$nvcc"):$PATH"
    # Replace fast_rnnt's fixed candidate list (35 ... 86) by ours.
    "$python_bin" - "$src/CMakeLists.txt" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
start = text.index("set(FT_COMPUTE_ARCH_CANDIDATES")
end = text.index('message(STATUS "FT_COMPUTE_ARCHS: ${FT_COMPUTE_ARCHS}")')
text = (text[:start] + 'string(REPLACE "," ";" FT_COMPUTE_ARCHS "${FT_CUDA_ARCHS}")\n  '
        + text[end:])
open(path, "w").write(text)
PY
    cmake_args="$cmake_args -DFT_CUDA_ARCHS=$archs"
    log "building fast_rnnt 1.3 with CUDA $("$python_bin" -c 'import torch; print(torch.version.cuda)') for sm_${archs//,/, sm_} (a few minutes)"
  else
    log "building fast_rnnt 1.3 for CPU (about a minute)"
  fi
  shim="$work/pybind11-shim"
  mkdir -p "$shim"
  pybind11_cmake_dir=$("$python_bin" -m pybind11 --cmakedir)
  cat > "$shim/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.24)
project(pybind11_shim)
set(CMAKE_FIND_PACKAGE_TARGETS_GLOBAL ON)
find_package(pybind11 CONFIG REQUIRED PATHS "$pybind11_cmake_dir" NO_DEFAULT_PATH)
CMAKE
  export FT_CMAKE_ARGS="$cmake_args -DCMAKE_CXX_STANDARD=17 -DFETCHCONTENT_SOURCE_DIR_PYBIND11=$shim -DFETCHCONTENT_FULLY_DISCONNECTED=ON -DPYTHON_EXECUTABLE=$python_bin"
  export FT_MAKE_ARGS="-j$(nproc)"
  "$python_bin" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps \
    --no-index -w "$wheel_dir" "$src"
fi

wheel=$(ls "$wheel_dir"/fast_rnnt-1.3-*.whl | head -1)
if [ -n "$target" ]; then
  mkdir -p "$target"
  "$python_bin" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
    "$wheel" "$target"
  export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
else
  "$python_bin" -m pip install --disable-pip-version-check -q --no-deps --force-reinstall "$wheel"
fi
# The extension must load against this torch, and run on the GPU when there is one.
"$python_bin" - <<'PY'
import torch
import fast_rnnt

device = "cuda" if torch.cuda.is_available() else "cpu"
logits = torch.randn(1, 4, 3, 5, device=device)
symbols = torch.tensor([[1, 2]], device=device)
boundary = torch.tensor([[0, 0, 2, 4]], device=device)
loss = fast_rnnt.rnnt_loss(logits, symbols, termination_symbol=0, boundary=boundary)
assert torch.isfinite(loss).all(), loss
import _fast_rnnt
assert _fast_rnnt.with_cuda() == bool(torch.version.cuda), (
    f"fast_rnnt built with CUDA: {_fast_rnnt.with_cuda()}, torch CUDA: {torch.version.cuda}")
print(f"fast_rnnt loads with torch {torch.__version__} and computes its loss on {device}")
PY
echo "$key" > "$wheel_dir/.installed-key"
