#!/usr/bin/env bash
# logged.sh [-a] LOG COMMAND [ARG...]: run COMMAND with its stdout and stderr in LOG, as a rule's
# `> {log} 2>&1` would (with -a appended, for the later commands of a job), and keep its exit
# status. A full disk can leave the log empty, error
# line included (Snakemake then shows only "empty file"): in that case, or whenever the log's
# disk is full, say so on this job's own stderr, which reaches the terminal.
set -uo pipefail
append=false
if [ "$1" = -a ]; then
    append=true
    shift
fi
log=$1
shift
if $append; then
    "$@" >>"$log" 2>&1
else
    "$@" >"$log" 2>&1
fi
status=$?
if [ "$status" -ne 0 ]; then
    free_kib=$(df -Pk -- "$(dirname -- "$log")" 2>/dev/null | awk 'NR == 2 { print $4 }')
    if [ ! -s "$log" ] || [ "${free_kib:-1}" = 0 ]; then
        echo "$1 failed (exit $status) and its log $log may be missing its last lines:" \
            "${free_kib:-an unknown number of} KiB free on that disk" \
            "(no space left on device?)" >&2
    fi
fi
exit "$status"
