#!/usr/bin/env bash
# Option parser for the recipe's shell scripts, in the spirit of Kaldi's
# parse_options.sh.  Source it after defining variables with defaults:
#
#   stage=0          # a variable becomes the option --stage
#   dl_dir=download  # underscores become dashes: --dl-dir
#   help_message="Usage: ..."   # printed by --help: document every option
#   . shared/parse_options.sh
#
# `--name value` and `--name=value` are accepted; an option that names no
# defined variable is an error (one line), so typos never pass silently.
# Positional arguments are left in "$@".

_po_script=$(basename "$0")


while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      echo "${help_message:-Usage: $_po_script [options]}"
      exit 0
      ;;
    --*=*)
      _po_name=${1%%=*}; _po_value=${1#*=}; shift
      ;;
    --*)
      if [ $# -lt 2 ]; then
        echo "$_po_script: option $1 needs a value" >&2; exit 1
      fi
      _po_name=$1; _po_value=$2; shift 2
      ;;
    *)
      break
      ;;
  esac
  _po_var=${_po_name#--}; _po_var=${_po_var//-/_}
  if [ -z "${!_po_var+set}" ] || ! [[ "$_po_var" =~ ^[a-z][a-z0-9_]*$ ]]; then
    echo "$_po_script: unknown option $_po_name (see $_po_script --help)" >&2
    exit 1
  fi
  printf -v "$_po_var" '%s' "$_po_value"
done
unset _po_name _po_value _po_var
