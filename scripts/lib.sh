# Shared by scripts/up.sh and scripts/test.sh (sourced, not run).

# require_root NAME WHY: stop with a clear message unless running as root.
require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$1: run as root ($2): sudo $0" >&2
        exit 1
    fi
}

# quiet_build NAME SWIFT-BUILD-ARGS...: swift build without its per-file progress lines;
# exits with a message if the build fails.
quiet_build() {
    local name=$1
    shift
    set +e
    swift build "$@" 2>&1 | grep -Ev '^\[[0-9]+/[0-9]+\] (Compiling|Emitting|Wrapping|Linking|Write|Planning)'
    local status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        echo "$name: the build failed" >&2
        exit 1
    fi
}
