#!/bin/sh
# The whole suite, inside a loopback-only network namespace. Arguments go to pytest.
set -eu
cd "$(dirname "$0")/.."
exec scripts/in-private-net.sh .venv/bin/python -m pytest "$@"
