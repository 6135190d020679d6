#!/usr/bin/env bash
# One entry point for the two README quickstart commands.
#   bash run.sh demo   set up .venv (idempotent), then the demo: train + evaluate on phantoms, serve the shipped weights
#   bash run.sh test   set up .venv (idempotent), then run the test suite
set -euo pipefail
cd "$(dirname "$0")"
PY=.venv/bin/python

setup() {
    if [ ! -x "$PY" ]; then
        python3 -m venv .venv
    fi
    # Re-install only when the pinned files changed since the last successful install.
    local want have=""
    want=$(cat requirements.txt constraints.txt requirements-nodeps.txt 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ -f .venv/.installed ] && have=$(cat .venv/.installed)
    if [ "$want" != "$have" ]; then
        "$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
        if [ -s requirements-nodeps.txt ]; then
            "$PY" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
        fi
        echo "$want" > .venv/.installed
    fi
}

case "${1:-}" in
    demo)
        setup
        shift
        exec "$PY" -m tools.demo "$@"
        ;;
    test)
        setup
        shift
        # two worker processes (one per core of the 2-core machines), each test file on one worker
        # (its module fixtures are built once), the slowest files first (tests/conftest.py,
        # SLOWEST_FILES); TEST_WORKERS=0 runs in this process
        exec "$PY" -m pytest -q tests -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
        ;;
    setup)
        setup
        ;;
    *)
        echo "usage: bash run.sh {demo|test|setup}" >&2
        exit 2
        ;;
esac
