#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs
# what the recipe needs: the pinned Python requirements, fast_rnnt built from
# its PyPI sdist (with CUDA when torch is a CUDA build: docs/gpu.md) and, with
# --dev, what the generated corpus, the tests and the browser test need.
# Running it twice does no work twice: each step checks first.
#
# Usage (from the project root):
#   shared/setup.sh          train, decode, export and serve on real LibriSpeech
#                            (requirements.txt; Debian g++ for fast_rnnt)
#   shared/setup.sh --dev    and the generated corpus, the tests, the browser test
#                            (requirements-dev.txt; Debian TTS voices, sox, text
#                            corpora, chromium): what run.sh and run_tests.sh use
#
# Debian packages are installed only as root (apt-get); without root, or if
# apt-get fails, setup.sh says which it skipped and what that disables, and goes
# on: nothing it installs with pip needs them.
set -euo pipefail

project_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$project_dir/.venv"
cache_dir="$project_dir/.cache"
python_bin=${PYTHON:-python3}
dev=false
case "${1:-}" in
  "") ;;
  --dev) dev=true;;
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
  *) echo "setup.sh: error: unknown option '$1' (use --dev or nothing)" >&2; exit 1;;
esac

log() { echo "[setup $(date +%H:%M:%S)] $*"; }

# ---------------------------------------------------------------- Debian ----
# Each group: the packages, and what is lost without them.  SETUP_FAKE_NONROOT=1
# behaves as an unprivileged user (tests/test_setup.py).
is_root() { [ "${SETUP_FAKE_NONROOT:-0}" != 1 ] && [ "$(id -u)" -eq 0 ]; }
debian_group() {
  # debian_group WHAT_IT_DISABLES PACKAGE...
  local disables=$1; shift
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if is_root; then
    log "installing Debian packages: ${missing[*]}"
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      return 0
    fi
    log "apt-get failed; skipping Debian packages ${missing[*]}: no $disables"
  else
    log "not root: skipping Debian packages ${missing[*]}: no $disables" \
        "(to install them: sudo apt-get install -y ${missing[*]}, then run setup.sh again)"
  fi
}
if ! command -v dpkg-query >/dev/null 2>&1; then
  log "no dpkg-query (not Debian): installing no system packages; fast_rnnt's build needs" \
      "a C++ compiler, the generated corpus sox, flite, espeak-ng and festival"
else
  debian_group "fast_rnnt build (the RNN-T loss then runs on its Triton or PyTorch backend)" \
    g++
  if [ "$dev" = true ]; then
    debian_group "generated corpus (prepare.sh --corpus synth, run.sh's default) and no tests that prepare one" \
      sox libsox-fmt-all flite espeak-ng festival festvox-kallpc16k festvox-kdlpc16k \
      festvox-us-slt-hts wordnet-base fortunes bible-kjv-text
    debian_group "browser test of the streaming server's web page (tests/test_deployment.py)" \
      chromium chromium-driver
  fi
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

# Stamps: the hash of each requirements file as last installed, so that an
# unchanged file is not installed again.
requirements_stamp="$venv/.requirements.sha256"
# Hash of the files' contents only (not their paths), so that another checkout
# of the same project sees the same stamps.
requirements_hash=$(cat "$project_dir/requirements.txt" "$project_dir/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$requirements_stamp" 2>/dev/null)" != "$requirements_hash" ]; then
  log "installing Python requirements (torch pinned with the rest; pip's index decides CPU or CUDA build)"
  "${pip[@]}" install -r "$project_dir/requirements.txt"
  # Editable install: puts the project root on sys.path so that
  # ./pruned_transducer_stateless4/train.py imports `shared` and `local`
  # without PYTHONPATH.
  "${pip[@]}" install --no-deps --no-build-isolation -e "$project_dir"
  echo "$requirements_hash" > "$requirements_stamp"
fi
if [ "$dev" = true ]; then
  dev_stamp="$venv/.requirements-dev.sha256"
  # requirements.txt is in the key: the dev file is installed with its pins.
  dev_hash=$(cat "$project_dir/requirements.txt" "$project_dir/requirements-dev.txt" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$dev_stamp" 2>/dev/null)" != "$dev_hash" ]; then
    log "installing the corpus, test and browser requirements (requirements-dev.txt)"
    "${pip[@]}" install -r "$project_dir/requirements.txt" -r "$project_dir/requirements-dev.txt"
    echo "$dev_hash" > "$dev_stamp"
  fi
fi

# ---------------------------------------------------------------- triton ----
# The Triton backend of the RNN-T loss (shared/mutual_information_triton.py).
# CUDA builds of torch bring the triton they were built with (never replace it:
# a pin here would fight torch's own); torch's CPU wheel brings none, and there
# the tests run the kernels in Triton's interpreter, with this version.
if ! "$venv/bin/python" -c "import triton" 2>/dev/null; then
  log "installing triton==3.6.0 (torch brought none; CPU: the interpreter runs its kernels)"
  "${pip[@]}" install triton==3.6.0
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
