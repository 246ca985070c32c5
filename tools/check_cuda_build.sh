#!/usr/bin/env bash
# Proves, on a machine without a GPU, that shared/build_fast_rnnt.py compiles
# fast_rnnt's CUDA extension with nothing but the package index: a scratch venv
# gets a CUDA torch and nvcc from pip (no CUDA toolkit, no CMake, no make), the
# script builds the extension for its default architectures (no GPU to ask),
# and the result must import with with_cuda() true, compute the loss on the
# CPU equal to shared/rnnt_reference.py, and hold SASS for every architecture
# (cuobjdump).  Without a GPU no kernel runs: tools/gpu_check.sh does that.
#
#   tools/check_cuda_build.sh                 # CUDA 13, then CUDA 12 if pip has an nvcc for it
#   tools/check_cuda_build.sh --cuda 13 --archs 90   # one architecture: a quicker compile
#
# Not part of CI: it downloads about 3 GB (a CUDA torch imports only with
# cuBLAS, cuDNN, NCCL, ... installed) and compiles for minutes.  The venvs stay
# in WORK for reruns (about 5 GB each; rm -rf WORK frees them).  docs/gpu.md
# records its output.
set -euo pipefail
project_dir=$(cd "$(dirname "$0")/.." && pwd)

cudas="13 12"
work=/tmp/check_cuda_build
python_bin=python3
archs=""

usage="Usage: $0 [--cuda '13 12'] [--work DIR] [--python PY] [--archs LIST]

  --cuda    CUDA major versions to check, in order [$cudas]
  --work    scratch directory for the venvs, the sdist and the build [$work]
  --python  the interpreter to make the venvs with [$python_bin]
  --archs   FT_CUDA_ARCHS for the build (e.g. 90); default: unset, i.e. the
            build script's list for the CUDA version, as on a machine without GPU"
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) cudas=$2; shift 2;;
    --work) work=$2; shift 2;;
    --python) python_bin=$2; shift 2;;
    --archs) archs=$2; shift 2;;
    -h|--help) echo "$usage"; exit 0;;
    *) echo "check_cuda_build.sh: error: unknown option '$1'" >&2; echo "$usage" >&2; exit 1;;
  esac
done
mkdir -p "$work"
work=$(cd "$work" && pwd)
start=$(date +%s)
log() { echo "[check_cuda_build +$(( $(date +%s) - start ))s] $*"; }
pip_quiet() { grep -v -e '^WARNING: Location' -e '^$' || true; }

log "machine: $(nproc) cores, $("$python_bin" --version), GPU: $(command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | head -1 || echo none)"
if [ ! -f "$work/fast_rnnt-1.3.tar.gz" ]; then
  "$python_bin" -m pip download -q --no-deps --no-binary :all: fast_rnnt==1.3 -d "$work" 2>&1 | pip_quiet
fi

results=()
for cuda in $cudas; do
  case "$cuda" in
    13)
      # PyPI's torch 2.11.0 for Linux is the CUDA 13.0 build (the GPU image's torch).
      torch_spec="torch==2.11.0"
      nvcc_dist="nvidia-cuda-nvcc==13.0.*"
      # nvcc's own dependencies (cicc in nvidia-nvvm, crt headers) pinned to its
      # version (unpinned, pip takes the newest); CCCL holds nv/target and cuda/std.
      cuda_packages=("$nvcc_dist" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"
        "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*")
      cuobjdump_dist="nvidia-cuda-cuobjdump==13.*"
      ;;
    12)
      torch_spec="torch==2.8.0"  # PyPI's torch 2.8.0 for Linux: the CUDA 12.8 build
      nvcc_dist="nvidia-cuda-nvcc-cu12==12.8.*"
      cuda_packages=("$nvcc_dist" "nvidia-cuda-runtime-cu12==12.8.*" "nvidia-cuda-cccl-cu12==12.8.*")
      cuobjdump_dist="nvidia-cuda-cuobjdump-cu12==12.8.*"
      ;;
    *) echo "check_cuda_build.sh: error: --cuda takes 13 and/or 12, not '$cuda'" >&2; exit 1;;
  esac
  log "=== CUDA $cuda"
  # Does the index's nvcc package hold an nvcc at all?  (Cheap: one wheel, no deps.)
  rm -rf "$work/probe-$cuda" && mkdir -p "$work/probe-$cuda"
  "$python_bin" -m pip download -q --no-deps -d "$work/probe-$cuda" "$nvcc_dist" 2>&1 | pip_quiet
  probe_wheel=$(ls "$work/probe-$cuda"/*.whl)
  if ! "$python_bin" -m zipfile -l "$probe_wheel" | grep -q -E '/bin/nvcc +'; then
    tools=$("$python_bin" -m zipfile -l "$probe_wheel" | grep -o -E '/bin/[a-z_+]+ ' | tr -d ' ' | tr '\n' ' ' || true)
    log "CUDA $cuda: SKIPPED: $(basename "$probe_wheel") has no nvcc (its bin/: ${tools:-nothing}); the package index alone cannot compile CUDA $cuda"
    results+=("CUDA $cuda: skipped, $(basename "$probe_wheel") holds no nvcc")
    continue
  fi

  venv=$work/venv-cu$cuda
  [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
  log "installing $torch_spec, ${cuda_packages[*]} into $venv"
  t0=$(date +%s)
  "$venv/bin/python" -m pip install -q "$torch_spec" "${cuda_packages[@]}" numpy "setuptools<82" wheel ninja 2>&1 | pip_quiet
  # cuobjdump only lists what the .so holds; the newest 13.x reads 13.0's output.
  "$venv/bin/python" -m pip install -q --no-deps "$cuobjdump_dist" 2>&1 | pip_quiet
  log "installed in $(( $(date +%s) - t0 )) s; venv: $(du -sh "$venv" | cut -f1)"
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  first_file() { for f in "$@"; do [ -f "$f" ] && { echo "$f"; return; }; done; }
  nvcc=$(first_file "$site"/nvidia/cu*/bin/nvcc "$site"/nvidia/cuda_nvcc/bin/nvcc)
  [ -n "$nvcc" ] || { echo "check_cuda_build.sh: error: no nvcc in $site/nvidia after installing $nvcc_dist" >&2; exit 1; }
  "$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU visible:', torch.cuda.is_available())"
  "$nvcc" --version | tail -2

  # The build as setup.sh runs it, with the pip nvcc named by CUDACXX (this machine
  # may have other nvcc's on PATH or in /usr/local/cuda).
  target=$work/site-cu$cuda
  t0=$(date +%s)
  set +e
  env -u CUDA_HOME -u CUDA_PATH -u TORCH_CUDA_ARCH_LIST CUDACXX="$nvcc" \
    ${archs:+FT_CUDA_ARCHS=$archs} PYTHONPATH="" \
    "$venv/bin/python" "$project_dir/shared/build_fast_rnnt.py" --force \
    --cache-dir "$work/cache" --sdist "$work/fast_rnnt-1.3.tar.gz" --target "$target"
  status=$?
  set -e
  build_s=$(( $(date +%s) - t0 ))
  if [ $status -ne 0 ]; then
    log "CUDA $cuda: FAILED: build_fast_rnnt.py exited $status after $build_s s"
    results+=("CUDA $cuda: FAILED (exit $status, $build_s s)")
    continue
  fi
  so=$(ls "$target"/_fast_rnnt*.so)
  PYTHONPATH=$target "$venv/bin/python" -c "
import torch, _fast_rnnt, fast_rnnt, json, pathlib
info = json.loads((pathlib.Path(fast_rnnt.__file__).parent / '_build_info.json').read_text())
assert _fast_rnnt.with_cuda(), 'built without CUDA kernels'
print('import fast_rnnt: ok; _fast_rnnt.with_cuda() =', _fast_rnnt.with_cuda(), '; built for', info['archs'])"
  cuobjdump=$(first_file "$site"/nvidia/cu*/bin/cuobjdump "$site"/nvidia/cuda_cuobjdump/bin/cuobjdump)
  # (cuobjdump fails when there is no PTX at all: an --archs list without +PTX.)
  sass=$({ "$cuobjdump" --list-elf "$so" || true; } | grep -o -E 'sm_[0-9]+' | sort -u -t_ -k2n | tr '\n' ' ' || true)
  ptx=$({ "$cuobjdump" --list-ptx "$so" 2>/dev/null || true; } | grep -o -E 'sm_[0-9]+' | sort -u -t_ -k2n | tr '\n' ' ' || true)
  log "$(basename "$so"): $(du -h "$so" | cut -f1); SASS for: $sass; PTX for: $ptx"
  results+=("CUDA $cuda: ok, compiled in $build_s s; SASS $sass; PTX $ptx")
done

log "summary (no GPU here: the kernels were compiled and linked, not run):"
for line in "${results[@]}"; do echo "  $line"; done
for line in "${results[@]}"; do case "$line" in *FAILED*) exit 1;; esac; done
