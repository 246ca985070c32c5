#!/usr/bin/env bash
# Builds (or reuses) a fast_rnnt 1.3 wheel that matches the torch of PYTHON,
# with CUDA kernels when that torch is a CUDA build and an nvcc is found, and
# installs it: shared/build_fast_rnnt.py does the work (its --help and module
# docstring say how: torch.utils.cpp_extension, no CMake, no make).
#
#   shared/build_fast_rnnt.sh PYTHON CACHE_DIR [SDIST] [--target SITE_DIR]
#
# - CACHE_DIR/wheels/fast_rnnt-1.3/KEY/ caches the wheel, KEY = torch version,
#   CUDA version and architectures (cuda-none without CUDA kernels), Python tag
#   and build revision.
# - SDIST: a fast_rnnt-1.3.tar.gz to build from (offline); default: pip downloads it.
# - --target SITE_DIR: unpack the wheel there (put it on PYTHONPATH) instead of
#   pip-installing it into PYTHON's environment (tools/gpu_check.sh).
# - Exit status 2: the CUDA extension could not be built (one line says why).
set -euo pipefail
python_bin=$1
cache_dir=$2
args=(--cache-dir "$cache_dir")
if [ -n "${3:-}" ] && [ "$3" != --target ]; then args+=(--sdist "$3"); shift; fi
if [ "${3:-}" = --target ]; then args+=(--target "${4:?--target needs a directory}"); fi
exec "$python_bin" "$(dirname "${BASH_SOURCE[0]}")/build_fast_rnnt.py" "${args[@]}"
