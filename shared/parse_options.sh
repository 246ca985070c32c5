#!/usr/bin/env bash
# Option parser for the recipe's shell scripts, in the spirit of Kaldi's
# parse_options.sh.  Source it after defining the option variables with their
# defaults and a help message that documents each option on a line of its own:
#
#   stage=0          # the option --stage
#   dl_dir=download  # underscores become dashes: --dl-dir
#   help_message="Usage: ...
#   Options:
#     --stage N      first stage [\$stage]
#     --dl-dir DIR   where corpora live [\$dl_dir]"
#   . shared/parse_options.sh
#
# The options are exactly the help message's option lines (a line that starts
# with blanks and then --name) whose variable is defined: the other variables
# of the script (recipe_dir, ...) are not options.  `--name value` and
# `--name=value` are accepted; any other --name is an error (one line, exit
# status 1), so typos never pass silently.  Positional arguments are left in
# "$@".

_po_script=$(basename "$0")

# " stage stop_stage ... ": the options the help message declares.
_po_declared=" "
while IFS= read -r _po_line; do
  if [[ $_po_line =~ ^[[:space:]]+--([a-z][a-z0-9-]*) ]]; then
    _po_var=${BASH_REMATCH[1]//-/_}
    if [ -n "${!_po_var+set}" ]; then
      _po_declared+="$_po_var "
    fi
  fi
done <<< "${help_message:-}"

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
  if [[ $_po_declared != *" $_po_var "* ]]; then
    echo "$_po_script: unknown option $_po_name (see $_po_script --help)" >&2
    exit 1
  fi
  printf -v "$_po_var" '%s' "$_po_value"
done
unset _po_name _po_value _po_var _po_line _po_declared
