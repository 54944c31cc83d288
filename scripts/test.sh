#!/usr/bin/env bash
# Runs Kiln's whole test suite on this machine, as root, from a clean clone:
# installs the Debian packages that are missing, builds, and runs every test against the
# real components (etcd, podman, the registry, a Maven mirror, a git server), which the
# tests start on free loopback ports and stop by PID.
#
#   ./scripts/test.sh                    # everything
#   ./scripts/test.sh --filter EtcdTests # one suite (any `swift test` arguments)
#
# The first run on a machine also makes the two base images with debootstrap (about two
# minutes, cached in /var/cache/kiln/images afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
require_root test.sh "the tests run podman and debootstrap"

./scripts/install-deps.sh

# Leftovers of an interrupted earlier run would hold ports or storage: stop them by the
# PIDs they recorded.
for pidfile in /var/tmp/kiln-test/*/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && grep -q podman "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
done
# Deployed app containers (label kiln.app) outlive the API services that started them: the
# deploy tests' cells have a storage of their own (podman-cells); older runs left theirs in
# the farms' (podman-e2e).
for root in /var/tmp/kiln-test/podman-cells /var/tmp/kiln-test/podman-e2e; do
    if [ -f "$root/containers.conf" ] && command -v podman >/dev/null; then
        ids=$(CONTAINERS_CONF=$root/containers.conf CONTAINERS_STORAGE_CONF=$root/storage.conf \
              podman ps -aq --filter label=kiln.app 2>/dev/null || true)
        if [ -n "$ids" ]; then
            CONTAINERS_CONF=$root/containers.conf CONTAINERS_STORAGE_CONF=$root/storage.conf podman rm -f $ids >/dev/null 2>&1 || true
        fi
    fi
done

start=$(date +%s)
echo "test.sh: building (a first build takes several minutes on 2 cores)"
quiet_build test.sh --build-tests
echo "test.sh: built in $(( $(date +%s) - start )) s; running the tests"
if [ $# -gt 0 ]; then
    exec swift test --skip-build "$@"
fi
# Two groups run in a process of their own, where they pass (idle, or with both cores
# busy): EtcdTests' checks that a finished watch closes its connection (etcd's watcher
# count back to 0), and LocalFarmTests' check that a podman root's overlay mount is gone
# after removeStorage. Sharing the process with the other suites (podman services and
# farms starting and stopping in parallel) makes both fail. Not understood yet; see the
# issue notes. The multi-host tests (network namespaces, 16 processes on hosts of their own;
# about 2 minutes) run there too, so that their timed faults do not share both cores with
# every other farm. Everything else runs together, in parallel.
isolated='EtcdTests|LocalFarmTests|MultiHostTests'
swift test --skip-build --skip "$isolated"
swift test --skip-build --filter "$isolated"

# The benchmarks are a package of their own (Benchmarks/, kiln-bench) that nothing else
# builds: build it here, so a change that breaks them fails now rather than on the next
# person who measures. Its own .build under Benchmarks/: a second build of the dependencies
# (about 4 minutes the first time on 2 cores, seconds afterwards).
start=$(date +%s)
echo "test.sh: building the benchmarks (Benchmarks/)"
quiet_build test.sh --package-path Benchmarks
echo "test.sh: benchmarks built in $(( $(date +%s) - start )) s"
