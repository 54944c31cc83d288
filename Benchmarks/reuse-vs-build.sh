#!/usr/bin/env bash
# Benchmarks/reuse-vs-build.sh: how long from the request to the tag pushed is a build that
# reuses an earlier build's image (same inputs: docs/reuse.md), against a full build of the
# same commit, side by side in one run?
#
# Usage (as root, from anywhere; uses the existing binary, never builds it):
#
#   Benchmarks/reuse-vs-build.sh [--runs N] [--data-dir DIR] [--kiln PATH]
#                                [--etcd-port P] [--etcd-peer-port P] [--registry-port P]
#                                [--api-port P] [--maven-port P] [--git-port P]
#                                [--results-dir DIR] [--start-timeout SECONDS]
#
#   --runs N           full/reused pairs to time (default 5).
#   --data-dir DIR     The farm's data folder (default /var/tmp/kiln-reuse-bench), kept between
#                      runs (base images, mirrors, Maven caches stay warm).
#   --kiln PATH        The kiln binary (default: .build/debug/kiln of this repository).
#   --*-port P         The farm's ports (defaults 24790 24800 26000 26070 26081 26082: below the
#                      ephemeral ports, which a client may take between the check and the start).
#   --results-dir DIR  Where the markdown goes (default Benchmarks/results).
#   --start-timeout S  How long `kiln up` may take to print "Kiln is running" (default 900).
#
# What one run does:
#   1. `kiln up --no-demo` on the ports above; registers the project demo (the farm's git
#      server, the demo's build image and command, as build-vs-hand.sh does); one warm-up build.
#   2. N times, alternating: (a) a full build, `POST /api/v1/projects/demo/builds
#      {"ref":"main","tag":"full-I","rebuild":true}` (the same commit, compiled again with warm
#      caches); (b) a reused build, the same request with tag reuse-I and no rebuild. Each is
#      timed from just before the request (client clock) to the end of its push step in the
#      record ("request → tag pushed"; the agent's clock, the same machine), and to the build's
#      end as the client sees it (polling the record every 20 ms). A reused build must name
#      the build it reused and the same digest; the full build must name none.
#   3. Writes RESULTS/reuse-vs-build-YYYY-MM-DD-HHMMSS.md, stops the farm.
# Needs: root, curl, python3, setsid, ss.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/.." && pwd -P)

RUNS=5
DATA=/var/tmp/kiln-reuse-bench
KILN=$repo/.build/debug/kiln
ETCD_PORT=24790
ETCD_PEER_PORT=24800
REGISTRY_PORT=26000
API_PORT=26070
MAVEN_PORT=26081
GIT_PORT=26082
RESULTS_DIR=$here/results
START_TIMEOUT=900
BUILD_IMAGE=localhost/kiln/jdk17-maven:1
BUILD_COMMAND='mvn -B -q package'

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'reuse-vs-build: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib/farm.sh
. "$here/lib/farm.sh"

while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --data-dir) DATA=${2:?--data-dir needs a folder}; shift 2 ;;
        --kiln) KILN=${2:?--kiln needs a path}; shift 2 ;;
        --etcd-port) ETCD_PORT=${2:?}; shift 2 ;;
        --etcd-peer-port) ETCD_PEER_PORT=${2:?}; shift 2 ;;
        --registry-port) REGISTRY_PORT=${2:?}; shift 2 ;;
        --api-port) API_PORT=${2:?}; shift 2 ;;
        --maven-port) MAVEN_PORT=${2:?}; shift 2 ;;
        --git-port) GIT_PORT=${2:?}; shift 2 ;;
        --results-dir) RESULTS_DIR=${2:?}; shift 2 ;;
        --start-timeout) START_TIMEOUT=${2:?}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number, not '$RUNS'"
[[ $START_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--start-timeout must be a positive number of seconds"
for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$REGISTRY_PORT" "$API_PORT" "$MAVEN_PORT" "$GIT_PORT"; do
    [[ $p =~ ^[1-9][0-9]{0,4}$ ]] && (( p < 65536 )) || die "bad port '$p'"
    [[ -z $(ss -Hltn "( sport = :$p )") ]] || die "port $p is already in use on this machine (another farm or test?): pass other ports"
done
[[ $(id -u) -eq 0 ]] || die "run as root (kiln up and podman's storage need it)"
[[ -x $KILN ]] || die "no kiln binary at $KILN (build it first with swift build, or pass --kiln)"
for c in curl python3 setsid ss; do command -v "$c" >/dev/null || die "$c is not installed"; done

mkdir -p "$DATA/bench/logs" "$RESULTS_DIR"
DATA=$(cd "$DATA" && pwd -P)
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd -P)
STAMP=$(date +%Y-%m-%d-%H%M%S)
TMP=$(mktemp -d "$DATA/bench/tmp.XXXXXX")
UP_LOG=$DATA/bench/logs/up-$STAMP.log
RAW=$TMP/raw.tsv
API=http://127.0.0.1:$API_PORT
GIT_URL=http://127.0.0.1:$GIT_PORT/demo.git

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RAW"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    farm_stop
    rm -rf "$TMP"
    (( rc == 0 )) || say "failed (exit $rc); the farm's output is in $UP_LOG"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LOAD_START=$(loadavg)
UPTIME_START=$(uptime)
say "uptime at start: $UPTIME_START"
say "starting the farm: $KILN up --no-demo --data-dir $DATA (log: $UP_LOG)"
farm_start "$UP_LOG" "$START_TIMEOUT" \
    --etcd-port "$ETCD_PORT" --etcd-peer-port "$ETCD_PEER_PORT" --registry-port "$REGISTRY_PORT" \
    --api-port "$API_PORT" --maven-port "$MAVEN_PORT" --git-port "$GIT_PORT"
say "farm running"
(umask 077; printf 'Authorization: Bearer %s\n' "$(cat "$DATA/credentials/admin-token")" >"$TMP/auth-header")

code=$(curl -sS -o "$TMP/project.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' -H @"$TMP/auth-header" \
    --data "{\"name\":\"demo\",\"repository\":\"$GIT_URL\",\"buildImage\":\"$BUILD_IMAGE\",\"buildCommand\":\"$BUILD_COMMAND\",\"dockerfile\":\"Dockerfile\",\"context\":\".\"}" \
    "$API/api/v1/projects") || die "the scheduler API at $API does not answer"
[[ $code == 200 || $code == 201 ]] || die "POST /api/v1/projects answered $code: $(cat "$TMP/project.json")"

# build LABEL TAG REBUILD(true|false): one build, timed; its record kept as TMP/LABEL.json.
build() {
    local label=$1 tag=$2 rebuild=$3 t0 t1 id status
    t0=$(now_ms)
    id=$(curl -sS -X POST -H 'Content-Type: application/json' -H @"$TMP/auth-header" \
        --data "{\"ref\":\"main\",\"tag\":\"$tag\",\"rebuild\":$rebuild,\"trigger\":\"bench\"}" \
        "$API/api/v1/projects/demo/builds" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])') \
        || die "the build request (tag $tag) failed"
    while true; do
        curl -sS -H @"$TMP/auth-header" "$API/api/v1/builds/$id" >"$TMP/$label.json"
        status=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' "$TMP/$label.json")
        case $status in succeeded|failed|cancelled) break ;; esac
        sleep 0.02
    done
    t1=$(now_ms)
    [[ $status == succeeded ]] || die "build $id (tag $tag) ended $status: $(curl -sS -H @"$TMP/auth-header" "$API/api/v1/builds/$id/log" | tail -n 30)"
    record "$label" t0_ms "$t0"
    record "$label" seen_ms $(( t1 - t0 ))
    python3 - "$TMP/$label.json" "$label" "$t0" >>"$RAW" <<'PY'
import json, sys
from datetime import datetime
b, label, t0 = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
def ms(s): return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000
push = next(s for s in b["steps"] if s["name"] == "push")
print(f"{label}\tid\t{b['id']}")
print(f"{label}\treusedFrom\t{b.get('reusedFrom') or '-'}")
print(f"{label}\tdigest\t{b.get('digest')}")
print(f"{label}\tpushed_ms\t{ms(push['finishedAt']) - t0:.0f}")
print(f"{label}\tcreated_to_pushed_ms\t{ms(push['finishedAt']) - ms(b['createdAt']):.0f}")
for s in b["steps"]:
    print(f"{label}\tstep_{s['name']}\t{s['status']} {s.get('durationMs', '')}")
PY
}

say "warm-up: one build"
build warmup warmup true
for (( i = 1; i <= RUNS; i++ )); do
    record "run$i" load "$(loadavg)"
    say "run $i/$RUNS: full build (tag full-$i, rebuild)"
    build "run$i-full" "full-$i" true
    say "run $i/$RUNS: reused build (tag reuse-$i)"
    build "run$i-reuse" "reuse-$i" false
    say "  full $(awk -F'\t' -v l="run$i-full" '$1 == l && $2 == "pushed_ms" { print $3 }' "$RAW") ms, reused $(awk -F'\t' -v l="run$i-reuse" '$1 == l && $2 == "pushed_ms" { print $3 }' "$RAW") ms (request → tag pushed)"
done
LOAD_END=$(loadavg)
UPTIME_END=$(uptime)
say "uptime at end: $UPTIME_END"

OUT=$RESULTS_DIR/reuse-vs-build-$STAMP.md
export RUNS STAMP UPTIME_START UPTIME_END KILN
export KILN_REV="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
python3 - "$RAW" "$OUT" <<'PY'
import os, statistics, sys
from collections import defaultdict
raw, out = sys.argv[1], sys.argv[2]
d = defaultdict(dict)
for line in open(raw):
    label, key, value = line.rstrip("\n").split("\t")
    d[label][key] = value
runs = int(os.environ["RUNS"])
full = [d[f"run{i}-full"] for i in range(1, runs + 1)]
reuse = [d[f"run{i}-reuse"] for i in range(1, runs + 1)]
problems = []
for i, (f, r) in enumerate(zip(full, reuse), 1):
    if f["reusedFrom"] != "-": problems.append(f"run {i}: the full build reused {f['reusedFrom']}")
    if r["reusedFrom"] == "-": problems.append(f"run {i}: the second build did not reuse")
    if r["reusedFrom"] != f["id"]: problems.append(f"run {i}: reused {r['reusedFrom']}, not the full build {f['id']} just before")
    if r["digest"] != f["digest"]: problems.append(f"run {i}: digests differ")
def med(rows, key): return statistics.median(float(x[key]) for x in rows) / 1000
def col(rows, key): return ", ".join(f"{float(x[key]) / 1000:.3f}" for x in rows)
lines = [
    f"# A reused build against a full build, {os.environ['STAMP']}", "",
    f"kiln {os.environ['KILN']} (rev {os.environ['KILN_REV']}), {runs} alternating pairs of the demo (ref main).",
    f"uptime at start: `{os.environ['UPTIME_START'].strip()}`; at end: `{os.environ['UPTIME_END'].strip()}`", "",
    "| median | full build (`rebuild`) | reused build | target |", "|---|---:|---:|---|",
    f"| **request → tag pushed** (client clock before the POST → the push step's end in the record) | **{med(full, 'pushed_ms'):.3f} s** | **{med(reuse, 'pushed_ms'):.3f} s** | reused ≤ 0.3 s |",
    f"| record created → tag pushed | {med(full, 'created_to_pushed_ms'):.3f} s | {med(reuse, 'created_to_pushed_ms'):.3f} s | |",
    f"| request → the client sees the end (polling every 20 ms) | {med(full, 'seen_ms'):.3f} s | {med(reuse, 'seen_ms'):.3f} s | |",
    "", "Each run (request → tag pushed, s):", "",
    f"- full: {col(full, 'pushed_ms')}", f"- reused: {col(reuse, 'pushed_ms')}", "",
    "Steps of each reused build: " + "; ".join(" ".join(r[f"step_{s}"] for s in ("fetch", "compile", "image", "push")) for r in reuse), "",
    "Checks: " + ("every reused build named the full build before it and its digest; no full build reused." if not problems else "; ".join(problems)),
]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
if problems: sys.exit(1)
PY
say "results: $OUT"
