#!/usr/bin/env bash
# The upgrade gate on two real runs of this CI: loud on a real change, quiet the other way round.
# Envoy 1.36.4 -> 1.40.0 fixes envoy-health-only-update (improvements only: exit 0); 1.40.0 -> 1.36.4 brings
# it back (exit 1, naming the cookie drain test and the features it belongs to).
set -uo pipefail
cd "$(dirname "$0")/.."
new=${1:?report of the default Envoy run} old=${2:?report of the Envoy 1.36.4 run}
gate() { .venv/bin/python -m harness.report.gate "$@"; }
gate "$old" "$new" >/dev/null; up=$?
out=$(gate "$new" "$old"); down=$?
if [[ $up != 0 ]]; then echo "gate-check: 1.36.4 -> default should exit 0, got $up" >&2; gate "$old" "$new"; exit 1; fi
if [[ $down != 1 ]] || ! grep -q "test_graceful_drain\[cookie\]: passed before, known-defect now" <<<"$out"; then
  echo "gate-check: default -> 1.36.4 should exit 1 on the cookie drain test, got $down:" >&2; echo "$out" >&2; exit 1
fi
echo "gate-check: 1.36.4 -> default exit 0, default -> 1.36.4 exit 1 (the known defect named)"
