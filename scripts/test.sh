#!/usr/bin/env bash
# The whole test suite against a real local stack: `attune stack up`, pytest (unit +
# integration), then `attune stack down` no matter how pytest ended. The exit code is pytest's
# (or stack up's, when the stack could not start). Extra arguments go to pytest, which then runs
# once, as given.
# Run it through `make test`, which sets up .venv and the jars first.
#
# Without arguments the suite runs in lanes, because one pytest process leaves a third of the
# two cores idle (measured with vmstat through a whole run: 35 % idle; the unit tests are one
# single-threaded process, the integration tests wait on brokers, servers and schedulers):
#   1. tests/integration/test_stack.py alone: it restarts the shared Kafka and Redis, which
#      every other integration test uses;
#   2. two pytest processes at once, each with its own temporary folder, JUnit XML and log
#      (var/log/pytest-<lane>.log; the console shows both, each line prefixed by its lane):
#        a: tests/unit, the notebooks, then the two end-to-end tests (the demo twice,
#           Airflow's nightly and retraining), which share no state with lane b (own topics,
#           Redis db, ports);
#        b: every other integration test.
#      The notebooks (155 s) sit in lane a because lane b ended 245 s after lane a without
#      them (fresh clone at 6af1bc2: a 1,496 s, b 1,741 s).
# Every integration module already runs on its own topics, Redis db or key prefix, free ports
# and temporary folders, which is what lets two of them run at once.
set -euo pipefail
cd "$(dirname "$0")/.."

export TF_USE_LEGACY_KERAS=1
attune=.venv/bin/attune
pytest=.venv/bin/pytest
tmp_root=/tmp/attune-pytest-$$
lanes=()

# A lane is a subshell running pytest (and pytest its servers): stop the whole tree.
kill_tree() {
    local child
    for child in $(pgrep -P "$1" || true); do
        kill_tree "$child"
    done
    kill "$1" 2>/dev/null || true
}
stop_lanes() {
    local pid
    for pid in "${lanes[@]}"; do
        kill_tree "$pid"
    done
    rm -rf "$tmp_root"
}
stack_down() {
    stop_lanes
    echo "test.sh: stopping the stack"
    "$attune" stack down || echo "test.sh: warning: 'attune stack down' failed" >&2
}
# EXIT covers normal ends and `set -e` failures; turn INT/TERM into exits so it runs then too.
trap stack_down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# One pytest process of a lane: its output to var/log/pytest-<lane>.log and, prefixed, to the
# console; returns pytest's exit status.
lane() {
    local name=$1
    shift
    PYTHONUNBUFFERED=1 "$pytest" -p no:cacheprovider --basetemp="$tmp_root/$name" \
        --junitxml="var/log/junit-$name.xml" "$@" 2>&1 |
        tee "var/log/pytest-$name.log" | sed -u "s/^/[$name] /"
    return "${PIPESTATUS[0]}"
}

echo "test.sh: starting the stack"
"$attune" stack up

mkdir -p var/log
status=0
if [ $# -gt 0 ]; then
    "$pytest" --junitxml=var/log/junit.xml "$@" || status=$?
    echo "test.sh: pytest exited with $status"
    .venv/bin/python scripts/test_times.py var/log/junit.xml || true
    exit "$status"
fi

rm -f var/log/junit-*.xml
mkdir -p "$tmp_root"
started=$SECONDS
echo "test.sh: lane stack: tests/integration/test_stack.py (alone: it restarts Kafka and Redis)"
lane stack tests/integration/test_stack.py || status=$?

ends_to_end=(tests/integration/notebooks tests/integration/test_replay.py tests/integration/airflow)
echo "test.sh: lanes a (tests/unit, the notebooks, then the end-to-end tests) and b (the other integration tests) at once"
lane a tests/unit "${ends_to_end[@]}" &
lanes+=($!)
lane b tests/integration --ignore=tests/integration/test_stack.py \
    "${ends_to_end[@]/#/--ignore=}" &
lanes+=($!)
for i in 0 1; do
    code=0
    wait "${lanes[$i]}" || code=$?
    echo "test.sh: lane $([ "$i" = 0 ] && echo a || echo b) exited with $code"
    [ "$code" = 0 ] || status=$code
done
lanes=()
echo "test.sh: pytest exited with $status after $((SECONDS - started)) s"
for name in stack a b; do
    echo "test.sh: lane $name: $(grep -E '^=+ .*(passed|failed|error).* in ' "var/log/pytest-$name.log" | tail -1 || echo '(no summary)')"
done
.venv/bin/python scripts/test_times.py var/log/junit-*.xml || true
exit "$status"
