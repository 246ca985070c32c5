#!/usr/bin/env python3
"""Unpacks into SITE the wheels of WHEEL_DIR whose modules this Python cannot
find, for PYTHON_TAG (e.g. cp312) or pure Python; leaves the others packed.

  tools/unpack_missing_wheels.py WHEEL_DIR SITE PYTHON_TAG

tools/gpu_check.sh puts SITE first on PYTHONPATH: a wheel unpacked there of a
module the machine already has would shadow the machine's version (pytest
and its plugins, typing_extensions, setuptools, ...), so each wheel is
checked with importlib.util.find_spec first.  Standard library only: it runs
before the bundle's packages are importable.
"""

import argparse
import importlib.util
import zipfile
from pathlib import Path


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel_dir", type=Path, help="Directory of .whl files.")
    parser.add_argument("site", type=Path, help="Where to unpack (goes on PYTHONPATH).")
    parser.add_argument("python_tag", help="This Python's wheel tag, e.g. cp312.")
    return parser


def top_level_modules(archive: zipfile.ZipFile) -> set[str]:
    """The importable names a wheel installs: its top_level.txt, else its
    top-level packages and modules (not .dist-info, .data, auditwheel's .libs)."""
    names = archive.namelist()
    for name in names:
        if name.endswith(".dist-info/top_level.txt"):
            listed = {line.strip() for line in archive.read(name).decode().splitlines()}
            return {module for module in listed if module}
    modules = set()
    for name in names:
        first = name.split("/")[0]
        if first.endswith((".dist-info", ".data", ".libs")):
            continue
        if "/" in name:
            modules.add(first)
        elif first.endswith((".py", ".so")):
            modules.add(first.split(".")[0])
    return modules


def fits(wheel: Path, python_tag: str) -> bool:
    """Whether the wheel is for this Python (its tag) or any Python 3."""
    tags = wheel.name.split("-")[-3].split(".")
    return python_tag in tags or "py3" in tags


def unpack_missing(wheel_dir: Path, site: Path, python_tag: str) -> tuple[list[str], list[str]]:
    """Returns (distributions unpacked, distributions left packed)."""
    unpacked, kept = [], []
    for wheel in sorted(wheel_dir.glob("*.whl")):
        if not fits(wheel, python_tag):
            continue
        distribution = wheel.name.split("-")[0]
        with zipfile.ZipFile(wheel) as archive:
            modules = top_level_modules(archive)
            if modules and all(importlib.util.find_spec(m) is not None for m in modules):
                kept.append(distribution)
                continue
            archive.extractall(site)
        unpacked.append(distribution)
    return unpacked, kept


def main() -> None:
    args = get_parser().parse_args()
    args.site.mkdir(parents=True, exist_ok=True)
    unpacked, kept = unpack_missing(args.wheel_dir, args.site, args.python_tag)
    print(f"unpacked {len(unpacked)} wheels: {' '.join(unpacked) or 'none'}")
    print(f"left packed (this Python has them): {' '.join(kept) or 'none'}")


if __name__ == "__main__":
    main()
