#!/usr/bin/env bash
# stage.sh NAME COMMAND...: run COMMAND, framed by its name and the time it took.
set -uo pipefail
name=$1; shift
printf '\n\033[1m=== %s\033[0m\n' "$name"
start=$(date +%s)
"$@"
rc=$?
printf '\033[1m=== %s: %s after %d s\033[0m\n' "$name" "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED (exit $rc)")" "$(( $(date +%s) - start ))"
exit $rc
