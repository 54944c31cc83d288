#!/usr/bin/env bash
# Runs Kiln on this machine, as root, from a clean clone: installs the Debian packages that
# are missing, builds Kiln, then `kiln up`: starts etcd, the registry, podman's API service,
# a Maven mirror, a git server with the demo project, the scheduler and two agents, builds
# the demo end to end and keeps running until Ctrl-C.
#
#   ./scripts/up.sh                 # run until Ctrl-C
#   ./scripts/up.sh --once          # build the demo and stop (for scripts and CI)
#   ./scripts/up.sh --help          # every option of `kiln up`
#
# Data lives in ./kiln-data (or --data-dir DIR): a second run reuses images and caches.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
require_root up.sh "podman's storage and debootstrap need it"

./scripts/install-deps.sh
if [ ! -x .build/debug/kiln ] || [ -n "$(find Sources Package.swift -newer .build/debug/kiln -print -quit 2>/dev/null)" ]; then
    echo "up.sh: building kiln (a first build takes several minutes on 2 cores)"
    quiet_build up.sh --product kiln
fi
exec .build/debug/kiln up "$@"
