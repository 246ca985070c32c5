#!/usr/bin/env bash
# The README's test command: sets up (or reuses) the environment, then runs
# ruff and the test suite.  Extra arguments go to pytest, e.g.
#   ./run_tests.sh -k conformer -x
set -euo pipefail
cd "$(dirname "$0")"
# --dev: the tests, the generated corpus and the browser test need requirements-dev.txt.
./shared/setup.sh --dev
. shared/path.sh
echo "[run_tests] ruff check"
ruff check .
echo "[run_tests] pytest"
exec python -m pytest "$@"
