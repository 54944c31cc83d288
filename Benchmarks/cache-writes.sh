#!/usr/bin/env bash
# Benchmarks/cache-writes.sh: what does "a cache changes only when a build succeeds" cost a
# warm build? The same warm demo build on a farm whose agents run with
# `--cache-writes on-success` (each build's caches an overlay, its changes kept only if it
# succeeds: BuildAgent/Sandbox/CacheLayers.swift) and with `--cache-writes direct` (the
# caches written in place, as before issue 16), the two alternating farm by farm.
#
# Usage (as root; uses the existing binary, never builds it):
#
#   Benchmarks/cache-writes.sh [--runs N] [--rounds R] [--data-dir DIR] [--kiln PATH]
#                              [--port-base P] [--results-dir DIR]
#
#   --runs N          Timed builds per farm (default 5), after one warm-up build.
#   --rounds R        Farms per mode (default 2): on-success, direct, on-success, direct, …
#   --data-dir DIR    The farm's data folder (default /var/tmp/kiln-bench-cache), kept between
#                     farms and runs: the agents' mirrors and Maven caches stay warm.
#   --kiln PATH       The kiln binary (default: .build/debug/kiln of this repository).
#   --port-base P     The farm's ports are P (etcd), P+10 (peer), P+20 (registry), P+30 (API),
#                     P+40 (Maven mirror), P+50 (git) (default 31790: below the machine's ephemeral ports, which a client may take between the check and the start).
#   --results-dir DIR Where the markdown goes (default Benchmarks/results).
#
# Each farm: `KILN_CACHE_WRITES=MODE kiln up --no-demo` (the agents read the variable), the
# project demo registered, one warm-up build, then N builds `kiln build demo --mvncache --rebuild
# --follow`, each timed by the wall clock of the command and by its compile step's duration
# (`kiln builds ID --json`). The table gives the medians per mode and their difference. The
# load average is recorded before each farm: the machine has 2 cores and other work may run.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/.." && pwd -P)
RUNS=5
ROUNDS=2
DATA=/var/tmp/kiln-bench-cache
KILN=$repo/.build/debug/kiln
BASE=31790
RESULTS_DIR=$here/results

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'cache-writes: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib/farm.sh
. "$here/lib/farm.sh"

while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
        --data-dir) DATA=${2:?--data-dir needs a folder}; shift 2 ;;
        --kiln) KILN=${2:?--kiln needs a path}; shift 2 ;;
        --port-base) BASE=${2:?--port-base needs a port}; shift 2 ;;
        --results-dir) RESULTS_DIR=${2:?}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number, not '$RUNS'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive number, not '$ROUNDS'"
[[ $BASE =~ ^[1-9][0-9]{3,4}$ ]] && (( BASE + 50 < 65536 )) || die "bad --port-base '$BASE'"
[[ $(id -u) -eq 0 ]] || die "run as root (kiln up, podman's storage and the overlays need it)"
[[ -x $KILN ]] || die "no kiln binary at $KILN (build it first with swift build, or pass --kiln)"
for c in curl python3 setsid ss; do command -v "$c" >/dev/null || die "$c is not installed (scripts/install-deps.sh installs it)"; done
PORTS=($BASE $((BASE + 10)) $((BASE + 20)) $((BASE + 30)) $((BASE + 40)) $((BASE + 50)))
for p in "${PORTS[@]}"; do
    [[ -z $(ss -Hltn "( sport = :$p )") ]] || die "port $p is already in use (another farm or test?): pass another --port-base"
done

mkdir -p "$DATA/bench/logs" "$RESULTS_DIR"
DATA=$(cd "$DATA" && pwd -P)
STAMP=$(date +%Y-%m-%d-%H%M%S)
TMP=$(mktemp -d "$DATA/bench/tmp.XXXXXX")
RAW=$TMP/raw.tsv
API=http://127.0.0.1:${PORTS[3]}
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    farm_stop
    rm -rf "$TMP"
    (( rc == 0 )) || say "failed (exit $rc); the farms' output is in $DATA/bench/logs"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# farm MODE ROUND: one farm with the agents' cache writes MODE, its builds recorded.
farm() {
    local mode=$1 round=$2 i
    local log=$DATA/bench/logs/up-$STAMP-$mode-$round.log
    say "farm $round, --cache-writes $mode (load $(cut -d' ' -f1-3 /proc/loadavg); log $log)"
    printf '%s\t%s\tload\t%s\n' "$mode" "$round" "$(cut -d' ' -f1 /proc/loadavg)" >>"$RAW"
    KILN_CACHE_WRITES=$mode farm_start "$log" 900 \
        --etcd-port "${PORTS[0]}" --etcd-peer-port "${PORTS[1]}" --registry-port "${PORTS[2]}" \
        --api-port "${PORTS[3]}" --maven-port "${PORTS[4]}" --git-port "${PORTS[5]}"
    KILN_TOKEN=$(cat "$DATA/credentials/admin-token")
    export KILN_TOKEN
    (umask 077; printf 'Authorization: Bearer %s\n' "$KILN_TOKEN" >"$TMP/auth-header")
    local code
    code=$(curl -sS -o "$TMP/project.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' -H @"$TMP/auth-header" \
        --data "{\"name\":\"demo\",\"repository\":\"http://127.0.0.1:${PORTS[5]}/demo.git\",\"buildImage\":\"localhost/kiln/jdk17-maven:1\",\"buildCommand\":\"mvn -B -q package\",\"dockerfile\":\"Dockerfile\",\"context\":\".\"}" \
        "$API/api/v1/projects")
    [[ $code == 200 || $code == 201 ]] || die "POST /api/v1/projects answered $code: $(cat "$TMP/project.json")"
    for (( i = 0; i <= RUNS; i++ )); do
        local tag=cw-$mode-$round-$i out=$TMP/build.log t0 t1 id
        t0=$(now_ms)
        "$KILN" build demo --ref main --tag "$tag" --mvncache --rebuild --follow --api "$API" >"$out" 2>&1 || { tail -n 40 "$out" >&2; die "kiln build (tag $tag) failed"; }
        t1=$(now_ms)
        id=$(sed -n 's/^kiln: build \([^ ]*\) of demo.*/\1/p' "$out" | head -n 1)
        [[ -n $id ]] || die "no build id in the output of kiln build (tag $tag)"
        grep -q "caches mounted" "$out" || die "build $id mounted no caches"
        if [[ $mode == on-success ]]; then
            grep -q "kept only if it succeeds" "$out" || die "build $id did not run over a cache layer"
        else
            grep -q "kept only if it succeeds" "$out" && die "build $id ran over a cache layer with --cache-writes direct"
        fi
        (( i == 0 )) && continue  # the warm-up
        "$KILN" builds "$id" --json --api "$API" >"$TMP/b.json"
        python3 - "$TMP/b.json" "$mode" "$round" "$(( t1 - t0 ))" >>"$RAW" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
assert b["status"] == "succeeded", b["status"]
compile = next(s["durationMs"] for s in b["steps"] if s["name"] == "compile")
print(f"{sys.argv[2]}\t{sys.argv[3]}\tbuild\t{sys.argv[4]}\t{compile}")
PY
    done
    farm_stop
}

for (( r = 1; r <= ROUNDS; r++ )); do
    farm on-success "$r"
    farm direct "$r"
done

OUT=$RESULTS_DIR/cache-writes-$STAMP.md
python3 - "$RAW" "$RUNS" "$ROUNDS" >"$OUT" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
runs, rounds = sys.argv[2], sys.argv[3]
def med(xs): return statistics.median(xs) / 1000
builds = {m: [r for r in rows if r[0] == m and r[2] == "build"] for m in ("on-success", "direct")}
print(f"# Cache writes: on-success against direct ({rounds} farm(s) per mode, {runs} warm builds each)\n")
print("| median | --cache-writes on-success | --cache-writes direct | cost |")
print("|---|---:|---:|---:|")
for name, i in (("whole build (kiln build --follow, wall)", 3), ("compile step", 4)):
    a, b = med([int(r[i]) for r in builds["on-success"]]), med([int(r[i]) for r in builds["direct"]])
    print(f"| {name} | {a:.2f} s | {b:.2f} s | {a - b:+.2f} s |")
print("\n| farm | mode | load at start | whole builds (s) | compile steps (s) |")
print("|---|---|---:|---|---|")
for r in rows:
    if r[2] == "load":
        bs = [x for x in rows if x[0] == r[0] and x[1] == r[1] and x[2] == "build"]
        print(f"| {r[1]} | {r[0]} | {r[3]} | {' '.join(f'{int(x[3])/1000:.2f}' for x in bs)} | {' '.join(f'{int(x[4])/1000:.2f}' for x in bs)} |")
PY
cat "$OUT"
say "written to $OUT"
