#!/usr/bin/env bash
# The whole test suite against a real local stack: `attune stack up`, pytest (unit +
# integration), then `attune stack down` no matter how pytest ended. The exit code is pytest's
# (or stack up's, when the stack could not start). Extra arguments go to pytest.
# Run it through `make test`, which sets up .venv and the jars first.
set -euo pipefail
cd "$(dirname "$0")/.."

export TF_USE_LEGACY_KERAS=1
attune=.venv/bin/attune

stack_down() {
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
mkdir -p var/log
.venv/bin/pytest --junitxml=var/log/junit.xml "$@" || status=$?
echo "test.sh: pytest exited with $status"
.venv/bin/python scripts/test_times.py var/log/junit.xml || true
exit "$status"
