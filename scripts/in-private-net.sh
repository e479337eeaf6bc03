#!/bin/sh
# Run a command in a private network namespace that has only loopback, so that servers which bind
# every interface (DCMTK 3.6.7 storescp, Orthanc) are reachable from nowhere but this machine.
# Falls back to the host namespace (with a warning) where unshare is not allowed (not root).
set -eu
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"
fi
echo "warning: cannot create a private network namespace (not root?): running on the host network" >&2
exec "$@"
