#!/usr/bin/env bash
# Sourced by the recipe's shell scripts: activates the project's virtual
# environment (made by shared/setup.sh) unless another one is active.
_project_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$_project_dir/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "$_project_dir/.venv/bin/activate"
fi
export PYTHONUNBUFFERED=1
unset _project_dir
