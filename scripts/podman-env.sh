#!/bin/sh
# Writes a self-contained podman configuration into DIR and prints the export lines
# that select it:
#
#   eval "$(scripts/podman-env.sh /tmp/my-podman)"
#
# Files written (overwritten if present):
#   DIR/containers.conf   ulimits within this VM's hard limits, runtime runc (crun fails here)
#   DIR/storage.conf      overlay driver, graphroot DIR/storage, runroot DIR/run
#   DIR/registries.conf   no search registries; 127.0.0.1:5000 marked insecure (plain HTTP)
#
# The overlay driver leaves a bind mount on DIR/storage/overlay: before deleting DIR, run
#   umount DIR/storage/overlay      (after stopping containers in that storage)
set -eu

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 DIR   (then: eval \"\$($0 DIR)\")" >&2
    exit 2
fi

case "$1" in
    *'"'*|*\\*) echo "$0: DIR must not contain a double quote or a backslash" >&2; exit 2 ;;
esac
mkdir -p "$1"
dir=$(cd "$1" && pwd -P)
mkdir -p "$dir/storage" "$dir/run"

cat >"$dir/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF

cat >"$dir/storage.conf" <<EOF
[storage]
driver = "overlay"
runroot = "$dir/run"
graphroot = "$dir/storage"
EOF

cat >"$dir/registries.conf" <<'EOF'
unqualified-search-registries = []

[[registry]]
location = "127.0.0.1:5000"
insecure = true
EOF

q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
printf 'export CONTAINERS_CONF=%s\n' "$(q "$dir/containers.conf")"
printf 'export CONTAINERS_STORAGE_CONF=%s\n' "$(q "$dir/storage.conf")"
printf 'export CONTAINERS_REGISTRIES_CONF=%s\n' "$(q "$dir/registries.conf")"
