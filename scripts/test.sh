#!/usr/bin/env bash
# The whole test suite against a real local stack: `attune stack up`, pytest (unit +
# integration), then `attune stack down` no matter how pytest ended. The exit code is pytest's
# (or stack up's, when the stack could not start). Extra arguments go to pytest.
# Run it through `make test`, which sets up .venv and the jars first.
#
# Without arguments the two halves run side by side: tests/unit (no services, about 7 minutes)
# in a second pytest process whose output goes to var/log/test-unit.log and is summed up at the
# end, tests/integration in the foreground. Most of either half's time is spent waiting on
# processes (JVMs, servers, Airflow's scheduler), so two cores run both in little more than the
# integration half's time. ATTUNE_TEST_SERIAL=1 runs them one after the other, as one pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

export TF_USE_LEGACY_KERAS=1
attune=.venv/bin/attune
unit_log=var/log/test-unit.log
unit_pid=""

stack_down() {
    if [[ -n "$unit_pid" ]]; then
        kill -- "$unit_pid" 2>/dev/null || true
    fi
    echo "test.sh: stopping the stack"
    "$attune" stack down || echo "test.sh: warning: 'attune stack down' failed" >&2
}
# EXIT covers normal ends and `set -e` failures; turn INT/TERM into exits so it runs then too.
trap stack_down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "test.sh: starting the stack"
"$attune" stack up

status=0
if [[ $# -gt 0 || "${ATTUNE_TEST_SERIAL:-0}" == "1" ]]; then
    .venv/bin/pytest "$@" || status=$?
    echo "test.sh: pytest exited with $status"
    exit "$status"
fi

mkdir -p "$(dirname "$unit_log")"
echo "test.sh: tests/unit runs alongside, its output in $unit_log"
# no cache plugin: two processes would both write .pytest_cache
.venv/bin/pytest -p no:cacheprovider tests/unit >"$unit_log" 2>&1 &
unit_pid=$!
started=$SECONDS

integration=0
.venv/bin/pytest tests/integration || integration=$?
echo "test.sh: tests/integration exited with $integration"

unit=0
if kill -0 "$unit_pid" 2>/dev/null; then
    echo "test.sh: waiting for tests/unit ($((SECONDS - started)) s so far)"
fi
wait "$unit_pid" || unit=$?
unit_pid=""
echo "test.sh: tests/unit exited with $unit; its failures and summary ($unit_log):"
# the summary from pytest's "short test summary info" (or the last lines) to the end
sed -n '/short test summary info/,$p' "$unit_log" | tail -n 60 | grep . ||
    tail -n 20 "$unit_log"
if [[ $unit -ne 0 ]]; then
    echo "test.sh: tests/unit FAILED (exit $unit): the full output is in $unit_log" >&2
fi
status=$((integration != 0 ? integration : unit))
echo "test.sh: pytest exited with $status (integration $integration, unit $unit)"
exit "$status"
