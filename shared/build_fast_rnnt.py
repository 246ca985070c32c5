#!/usr/bin/env python3
"""Builds fast_rnnt 1.3's extension for the running torch, without fast_rnnt's CMake.

fast_rnnt ships only as an sdist whose CMake goes through torch's Caffe2 CUDA
config: that wants a full CUDA toolkit (it fails beside the package index's
``nvidia-cuda-nvcc``), falls back to ``compute_35``/``compute_50`` without a
visible GPU (rejected by CUDA 12/13), passes C++17 where torch >= 2.14 needs
C++20, and its setup.py runs ``make``.  This script compiles the same four
source files with :mod:`torch.utils.cpp_extension` instead, which takes the
C++ standard and the ABI flags from the installed torch and runs ninja if
present (else setuptools' own compiler driver), and packs a wheel with
fast_rnnt's layout: the ``fast_rnnt`` package plus the ``_fast_rnnt``
extension module (``with_cuda()``, ``mutual_information_forward/backward``).

With a CUDA torch, the kernels are compiled by the nvcc found first among
``$CUDACXX``, ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin``, ``PATH``,
``/usr/local/cuda/bin`` and the package index's ``nvidia-cuda-nvcc`` inside
site-packages, whose CUDA major version matches torch's.  CUDA architectures:
``FT_CUDA_ARCHS`` (``"80,90"``) or ``TORCH_CUDA_ARCH_LIST`` (``"8.0 9.0+PTX"``)
when set, else those of the visible GPUs, else a list for the CUDA version
(see :func:`default_archs`); the newest chosen automatically also gets PTX.
A CUDA torch on a machine with neither a GPU nor an nvcc gets the CPU-only
extension.

The wheel is cached in ``CACHE_DIR/wheels/fast_rnnt-1.3/KEY/`` (KEY: torch
version, CUDA version and architectures or ``cuda-none``, Python tag, build
revision) and records what it was built for in ``fast_rnnt/_build_info.json``;
:func:`check_fast_rnnt_build` compares that with the running torch and GPU.

Exit status: 0 installed (or already up to date); 2 the CUDA extension could
not be built (one line on stderr says why, nothing was installed; callers such
as ``shared/setup.sh`` go on and the RNN-T loss uses another backend); 1 any
other error.

Usage:
    python shared/build_fast_rnnt.py --cache-dir .cache
    python shared/build_fast_rnnt.py --cache-dir /tmp/c --sdist fast_rnnt-1.3.tar.gz \\
        --target /tmp/site          # unpack instead of pip install
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# Run as `python shared/build_fast_rnnt.py` (any Python, the project not
# installed): the project root goes on sys.path for the library beside it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.fast_rnnt_build import (  # noqa: E402
    EXIT_NO_CUDA_BUILD,
    FAST_RNNT_VERSION,
    BuildError,
    build,
    check_fast_rnnt_build,
    install_wheel,
    installed_key,
    log,
    plan_build,
    verify,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"),
                        help="wheels are cached in CACHE_DIR/wheels/fast_rnnt-1.3/KEY/")
    parser.add_argument("--sdist", type=Path, default=None,
                        help="a fast_rnnt-1.3.tar.gz to build from (offline machines); "
                        "default: pip downloads it")
    parser.add_argument("--target", type=Path, default=None,
                        help="unpack the wheel into this directory (to put on PYTHONPATH) "
                        "instead of pip-installing it into this Python's environment")
    parser.add_argument("--force", action="store_true",
                        help="build and install even if a cached wheel or an installed "
                        "build of the same key exists")
    parser.add_argument("--print-key", action="store_true",
                        help="print the cache key of this Python, torch and nvcc and exit")
    return parser


def main() -> int:
    args = get_parser().parse_args()
    if args.sdist is not None and not args.sdist.is_file():
        print(f"build_fast_rnnt: error: --sdist {args.sdist} is not a file", file=sys.stderr)
        return 1
    try:
        plan = plan_build(os.environ)
    except BuildError as error:
        print(f"fast_rnnt: no CUDA build: {error}", file=sys.stderr)
        return EXIT_NO_CUDA_BUILD
    if args.print_key:
        print(plan.key)
        return 0
    if not args.force and installed_key(args.target) == plan.key:
        if args.target is not None:
            sys.path.insert(0, str(args.target))
        if check_fast_rnnt_build() is None:
            log(f"fast_rnnt is up to date ({plan.key})")
            return 0

    wheel_dir = args.cache_dir.resolve() / "wheels" / f"fast_rnnt-{FAST_RNNT_VERSION}" / plan.key
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cuda = plan.nvcc is not None
    try:
        wheels = sorted(wheel_dir.glob(f"fast_rnnt-{FAST_RNNT_VERSION}-*.whl"))
        if args.force or not wheels:
            for old in wheels:
                old.unlink()
            wheel = build(plan, args.sdist, wheel_dir)
        else:
            wheel = wheels[0]
            log(f"using the cached {wheel_dir.name}/{wheel.name}")
        # Checked in a scratch directory first: a wheel that fails never replaces
        # a working installation (nor stays in the cache).
        with tempfile.TemporaryDirectory(prefix="fast_rnnt-check-") as scratch:
            install_wheel(wheel, Path(scratch))
            try:
                verify(Path(scratch))
            except BuildError:
                wheel.unlink()
                raise
        install_wheel(wheel, args.target)
    except BuildError as error:
        if cuda:
            print(f"fast_rnnt: CUDA build failed: {error}", file=sys.stderr)
            return EXIT_NO_CUDA_BUILD
        print(f"fast_rnnt: build failed: {error}", file=sys.stderr)
        return 1
    log(f"installed {wheel.name} ({plan.key})"
        + (f" into {args.target}" if args.target is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
