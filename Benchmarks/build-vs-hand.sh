#!/usr/bin/env bash
# Benchmarks/build-vs-hand.sh: how much slower is a Kiln build than the same four steps
# typed by hand (git clone, podman run mvn, podman build, podman push)?
#
# Usage (as root, from anywhere; uses the existing binary, never builds it):
#
#   Benchmarks/build-vs-hand.sh [--runs N] [--data-dir DIR] [--kiln PATH]
#                               [--etcd-port P] [--etcd-peer-port P] [--registry-port P]
#                               [--api-port P] [--maven-port P] [--git-port P]
#                               [--results-dir DIR] [--start-timeout SECONDS]
#
#   --runs N           Kiln/by-hand pairs to time (default 5).
#   --data-dir DIR     The farm's data folder (default /var/tmp/kiln-bench). Kept between
#                      runs, so the base images, the agents' git mirrors and Maven caches and
#                      the by-hand Maven cache (DIR/bench/hand-m2) stay warm. The first run on
#                      a new folder makes the base images (about 2 minutes).
#   --kiln PATH        The kiln binary (default: .build/debug/kiln of this repository).
#   --*-port P         The farm's ports (defaults 23790 23800 25000 27070 28081 28082: not
#                      the defaults of `kiln up`, so that tests on the usual ports are safe).
#   --results-dir DIR  Where the markdown goes (default Benchmarks/results).
#   --start-timeout S  How long `kiln up` may take to print "Kiln is running" (default 900).
#
# What one run does:
#   1. `kiln up --no-demo` on the ports above (output in DIR/bench/logs/up-STAMP.log); waits
#      for "Kiln is running". Registers the project demo through POST /api/v1/projects
#      (repository = the farm's git server). Warms up: one Kiln build with --mvncache and one
#      by-hand run with the by-hand Maven cache.
#   2. N times: (a) `kiln build demo --ref main --tag kiln-I --mvncache --rebuild --follow` (a real
#      build: the same commit again would otherwise reuse the first one's image), timed by the
#      wall clock of the command, with Kiln's own step durations from `kiln builds ID --json`;
#      (b) by hand against the same podman storage (DIR/podman/*.conf), the same Maven mirror
#      settings (the home agent's maven-settings.xml), a warm by-hand Maven cache, and the
#      sandbox a Kiln build gets (the agent's defaults: podman's bridge network, 4 GiB, 2 CPUs,
#      4096 processes, all capabilities dropped but SANDBOX_CAPS, no-new-privileges):
#        git clone --quiet http://127.0.0.1:GIT/demo.git W
#        podman run --rm --network bridge LIMITS --cap-drop ALL --cap-add SANDBOX_CAPS \
#          --security-opt no-new-privileges -v W:/workspace -w /workspace \
#          -v SETTINGS:/etc/maven/settings.xml:ro -v HANDCACHE:/root/.m2 \
#          localhost/kiln/jdk17-maven:1 sh -c 'mvn -B -q package'
#        podman build --isolation oci --network private --memory 4g --memory-swap 4g \
#          --cpu-period 100000 --cpu-quota 200000 --cap-drop ALL --cap-add SANDBOX_CAPS \
#          -t 127.0.0.1:REG/demo:hand-I -f W/Dockerfile W
#        podman push --tls-verify=false 127.0.0.1:REG/demo:hand-I
#   3. Cold vs warm Maven cache: a Kiln build with --no-mvncache and one with --mvncache; by
#      hand, the same podman run with an empty cache folder (files downloaded into it are
#      counted) and with the warm one.
#   4. Repeat fetch of an unchanged repository: Kiln's fetch step (libgit2 incremental fetch
#      into the agent's mirror, "fetched N objects" in the log) vs a fresh `git clone` and vs
#      `git fetch` into a by-hand mirror.
#   5. Prints the tables, writes them to RESULTS/build-vs-hand-YYYY-MM-DD-HHMMSS.md, stops the
#      farm (SIGTERM to `kiln up`, which stops everything it started) and deletes its temporary
#      folder (DIR/bench/tmp.*); the data folder stays.
#
# The farm is stopped on every exit (success, failure, Ctrl-C). The machine has 2 cores and
# other work may run: the load average at start and end (and before each pair) is recorded.
# Needs: root, git, podman, curl, python3, setsid, ss (all installed by scripts/install-deps.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/.." && pwd -P)

RUNS=5
DATA=/var/tmp/kiln-bench
KILN=$repo/.build/debug/kiln
ETCD_PORT=23790
ETCD_PEER_PORT=23800
REGISTRY_PORT=25000
API_PORT=27070
MAVEN_PORT=28081
GIT_PORT=28082
RESULTS_DIR=$here/results
START_TIMEOUT=900

BUILD_IMAGE=localhost/kiln/jdk17-maven:1
BUILD_COMMAND='mvn -B -q package'
# The sandbox of a Kiln build with the agent's defaults (kiln agent --build-memory 4g
# --build-cpus 2 --build-pids 4096, --compile-network bridge; BuildSandbox.capabilities).
SANDBOX_CAPS=CHOWN,DAC_OVERRIDE,FOWNER,FSETID,SETUID,SETGID,KILL,NET_BIND_SERVICE
RUN_SANDBOX=(--network bridge --memory 4g --memory-swap 4g --cpus 2 --pids-limit 4096
             --cap-drop ALL --cap-add "$SANDBOX_CAPS" --security-opt no-new-privileges)
BUILD_SANDBOX=(--network private --memory 4g --memory-swap 4g --cpu-period 100000 --cpu-quota 200000
               --cap-drop ALL --cap-add "$SANDBOX_CAPS")

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'build-vs-hand: error: %s\n' "$*" >&2; exit 1; }

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
done
[[ $(id -u) -eq 0 ]] || die "run as root (kiln up and podman's storage need it)"
[[ -x $KILN ]] || die "no kiln binary at $KILN (build it first with swift build, or pass --kiln)"
for c in git podman curl python3 setsid ss; do
    command -v "$c" >/dev/null || die "$c is not installed (scripts/install-deps.sh installs it)"
done
for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$REGISTRY_PORT" "$API_PORT" "$MAVEN_PORT" "$GIT_PORT"; do
    if [[ -n $(ss -Hltn "( sport = :$p )") ]]; then
        die "port $p is already in use on this machine (another farm or test?): pass other ports"
    fi
done

mkdir -p "$DATA"
DATA=$(cd "$DATA" && pwd -P)
mkdir -p "$DATA/bench/logs" "$RESULTS_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd -P)
STAMP=$(date +%Y-%m-%d-%H%M%S)
TMP=$(mktemp -d "$DATA/bench/tmp.XXXXXX")   # same file system as the agents' workspaces
HANDCACHE=$DATA/bench/hand-m2
UP_LOG=$DATA/bench/logs/up-$STAMP.log
RAW=$TMP/raw.tsv          # one line per measurement: section, key, value
API=http://127.0.0.1:$API_PORT
REG=127.0.0.1:$REGISTRY_PORT
GIT_URL=http://127.0.0.1:$GIT_PORT/demo.git
UP_PID=

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RAW"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# Milliseconds since the epoch, without forking (bash 5's EPOCHREALTIME).
now_ms() { local t=${EPOCHREALTIME/./}; echo $(( 10#$t / 1000 )); }

# ---------------------------------------------------------------------------------------------
# Stopping the farm: on every exit.

stop_farm() {
    [[ -n $UP_PID ]] || return 0
    if kill -0 "$UP_PID" 2>/dev/null; then
        say "stopping the farm (kiln up, pid $UP_PID)"
        kill -TERM "$UP_PID" 2>/dev/null || true
        local i
        for (( i = 0; i < 90; i++ )); do
            kill -0 "$UP_PID" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$UP_PID" 2>/dev/null; then
            say "kiln up did not stop within 90 s: sending SIGKILL (its children may be left; see $UP_LOG)"
            kill -KILL "$UP_PID" 2>/dev/null || true
        fi
    fi
    wait "$UP_PID" 2>/dev/null || true
    UP_PID=
    local p left=()
    for p in "$ETCD_PORT" "$REGISTRY_PORT" "$API_PORT" "$MAVEN_PORT" "$GIT_PORT"; do
        [[ -z $(ss -Hltn "( sport = :$p )") ]] || left+=("$p")
    done
    if (( ${#left[@]} )); then
        say "warning: ports ${left[*]} still listen after the farm stopped; see $UP_LOG"
    else
        say "farm stopped"
    fi
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_farm
    rm -rf "$TMP"
    (( rc == 0 )) || say "failed (exit $rc); the farm's output is in $UP_LOG"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# 1. The farm.

LOAD_START=$(loadavg)
say "load average at start: $LOAD_START"
say "starting the farm: $KILN up --no-demo --data-dir $DATA (log: $UP_LOG)"
# Its own session: a Ctrl-C here reaches it only through the trap (SIGTERM), once.
setsid "$KILN" up --no-demo --data-dir "$DATA" \
    --etcd-port "$ETCD_PORT" --etcd-peer-port "$ETCD_PEER_PORT" --registry-port "$REGISTRY_PORT" \
    --api-port "$API_PORT" --maven-port "$MAVEN_PORT" --git-port "$GIT_PORT" \
    >"$UP_LOG" 2>&1 </dev/null &
UP_PID=$!
deadline=$(( SECONDS + START_TIMEOUT ))
until grep -qs "Kiln is running" "$UP_LOG"; do
    if ! kill -0 "$UP_PID" 2>/dev/null; then
        wait "$UP_PID" && rc=0 || rc=$?
        UP_PID=
        tail -n 30 "$UP_LOG" >&2
        die "kiln up exited (status $rc) before it printed \"Kiln is running\"; its output is above and in $UP_LOG"
    fi
    if (( SECONDS > deadline )); then
        tail -n 30 "$UP_LOG" >&2
        die "kiln up did not print \"Kiln is running\" within $START_TIMEOUT s; its output is above and in $UP_LOG"
    fi
    sleep 1
done
say "farm running"
# The API takes the first admin's token (kiln up keeps it with its credentials): the kiln
# commands read KILN_TOKEN, curl a header file of mode 0600 (not its command line).
KILN_TOKEN=$(cat "$DATA/credentials/admin-token") || die "cannot read $DATA/credentials/admin-token"
export KILN_TOKEN
(umask 077; printf 'Authorization: Bearer %s\n' "$KILN_TOKEN" >"$TMP/auth-header")

export CONTAINERS_CONF=$DATA/podman/containers.conf
export CONTAINERS_STORAGE_CONF=$DATA/podman/storage.conf
export CONTAINERS_REGISTRIES_CONF=$DATA/podman/registries.conf
# The registry takes only tokens from the scheduler: the by-hand side pushes as admin, logged
# in once into an auth file of this run's own (not the farm's podman service's).
export REGISTRY_AUTH_FILE=$TMP/hand-auth.json
podman login --tls-verify=false -u admin --password-stdin "$REG" <"$DATA/credentials/admin-token" >/dev/null \
    || die "podman login to $REG as admin failed (the admin token is $DATA/credentials/admin-token)"
PODMAN_PID=$(cat "$DATA/podman/podman.pid" 2>/dev/null || true)
[[ -n $PODMAN_PID && -r /proc/$PODMAN_PID/stat ]] || PODMAN_PID=
# CPU time (ms) the podman API service has used so far; 0 if unknown.
podman_cpu_ms() {
    [[ -n $PODMAN_PID && -r /proc/$PODMAN_PID/stat ]] || { echo 0; return; }
    local hz; hz=$(getconf CLK_TCK)
    awk -v hz="$hz" '{ sub(/^.*\) /, ""); print int(($12 + $13) * 1000 / hz) }' "/proc/$PODMAN_PID/stat"
}

say "registering the project demo ($GIT_URL)"
code=$(curl -sS -o "$TMP/project.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' -H @"$TMP/auth-header" \
    --data "{\"name\":\"demo\",\"repository\":\"$GIT_URL\",\"buildImage\":\"$BUILD_IMAGE\",\"buildCommand\":\"$BUILD_COMMAND\",\"dockerfile\":\"Dockerfile\",\"context\":\".\"}" \
    "$API/api/v1/projects") || die "the scheduler API at $API does not answer"
[[ $code == 200 || $code == 201 ]] || die "POST /api/v1/projects answered $code: $(cat "$TMP/project.json")"

# Builds an interrupted earlier run left unfinished go back to the queue when the farm starts
# again and would run beside the measured ones: cancel them and wait until they have ended.
unfinished() {
    curl -sS -H @"$TMP/auth-header" "$API/api/v1/builds?limit=1000" | python3 -c '
import json, sys
for b in json.load(sys.stdin):
    if b.get("status") in ("queued", "assigned", "running"): print(b["id"])'
}
left=$(unfinished) || die "cannot list builds at $API"
if [[ -n $left ]]; then
    for id in $left; do
        say "cancelling build $id left unfinished by an earlier run"
        curl -sS -o /dev/null -H @"$TMP/auth-header" -X POST "$API/api/v1/builds/$id/cancel" || true
    done
    # Kiln (at the time of writing) stops a cancelled build's container but may leave its
    # record "running" until the agent stops; what matters here is that nothing runs.
    deadline=$(( SECONDS + 30 ))
    while [[ -n $(unfinished) ]] && (( SECONDS < deadline )); do sleep 1; done
    if [[ -n $(unfinished) ]]; then
        say "warning: cancelled builds still not final after 30 s: $(unfinished | tr '\n' ' ')(a Kiln bug)"
    fi
    deadline=$(( SECONDS + 60 ))
    while [[ -n $(podman ps -q --filter label=kiln.build) ]]; do
        (( SECONDS < deadline )) || die "build containers of cancelled builds still run after 60 s: $(podman ps --filter label=kiln.build --format '{{.ID}} {{.Labels}}')"
        sleep 1
    done
fi

# ---------------------------------------------------------------------------------------------
# The two ways of building.

# kiln_build LABEL TAG --mvncache|--no-mvncache: one Kiln build, recorded under LABEL.
kiln_build() {
    local label=$1 tag=$2 cacheflag=$3 out=$TMP/kiln-$2.log t0 t1 cpu0 cpu1 id
    cpu0=$(podman_cpu_ms)
    t0=$(now_ms)
    if ! "$KILN" build demo --ref main --tag "$tag" "$cacheflag" --rebuild --follow --api "$API" >"$out" 2>&1; then
        tail -n 40 "$out" >&2
        die "kiln build (tag $tag) failed; its output is above"
    fi
    t1=$(now_ms)
    cpu1=$(podman_cpu_ms)
    id=$(sed -n 's/^kiln: build \([^ ]*\) of demo.*/\1/p' "$out" | head -n 1)
    [[ -n $id ]] || id=$(sed -n 's/^queued build \([^ ]*\) .*/\1/p' "$out" | head -n 1)
    [[ -n $id ]] || die "cannot find the build id in the output of kiln build (tag $tag): $out"
    "$KILN" builds "$id" --json --api "$API" >"$TMP/kiln-$tag.json" || die "kiln builds $id --json failed"
    record "$label" wall_ms $(( t1 - t0 ))
    record "$label" t0_ms "$t0"
    record "$label" t1_ms "$t1"
    record "$label" podman_cpu_ms $(( cpu1 - cpu0 ))
    record "$label" build_id "$id"
    local fetched
    fetched=$(grep -m1 -o 'fetched [0-9]* objects ([0-9]* KiB)' "$out" || true)
    record "$label" fetched "${fetched:-?}"
    python3 - "$TMP/kiln-$tag.json" "$label" >>"$RAW" <<'PY'
import json, sys
from datetime import datetime
b = json.load(open(sys.argv[1]))
label = sys.argv[2]
def t(s): return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000
print(f"{label}\tstatus\t{b.get('status')}")
print(f"{label}\tagent\t{b.get('agent', '?')}")
for s in b.get("steps", []):
    print(f"{label}\tstep_{s['name']}_ms\t{s.get('durationMs', '')}")
for k in ("createdAt", "startedAt", "finishedAt"):
    if b.get(k): print(f"{label}\t{k}_ms\t{t(b[k]):.0f}")
PY
    local status
    status=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("status"))' "$TMP/kiln-$tag.json")
    [[ $status == succeeded ]] || die "Kiln build $id (tag $tag) ended $status"
}

# hand_build LABEL TAG CACHE: the four steps by hand, recorded under LABEL.
hand_build() {
    local label=$1 tag=$2 cache=$3 w=$TMP/hand-$2 out=$TMP/hand-$2.log t0 t1 t2 t3 t4 cpu0 cpu1
    mkdir -p "$cache"
    rm -rf "$w"
    : >"$out"
    cpu0=$(podman_cpu_ms)
    t0=$(now_ms)
    hand_step "$tag" git clone --quiet "$GIT_URL" "$w"
    t1=$(now_ms)
    hand_step "$tag" podman run --rm "${RUN_SANDBOX[@]}" -v "$w:/workspace" -w /workspace \
        -v "$SETTINGS:/etc/maven/settings.xml:ro" -v "$cache:/root/.m2" \
        "$BUILD_IMAGE" sh -c "$BUILD_COMMAND"
    t2=$(now_ms)
    hand_step "$tag" podman build --isolation oci "${BUILD_SANDBOX[@]}" --quiet -t "$REG/demo:$tag" -f "$w/Dockerfile" "$w"
    t3=$(now_ms)
    hand_step "$tag" podman push --quiet --tls-verify=false "$REG/demo:$tag"
    t4=$(now_ms)
    cpu1=$(podman_cpu_ms)
    record "$label" podman_cpu_ms $(( cpu1 - cpu0 ))
    record "$label" wall_ms $(( t4 - t0 ))
    record "$label" clone_ms $(( t1 - t0 ))
    record "$label" run_ms $(( t2 - t1 ))
    record "$label" build_ms $(( t3 - t2 ))
    record "$label" push_ms $(( t4 - t3 ))
    rm -rf "$w"
}

# hand_step TAG COMMAND...: one by-hand step, its output appended to the run's log.
hand_step() {
    local tag=$1 out=$TMP/hand-$1.log
    shift
    if ! "$@" >>"$out" 2>&1; then
        tail -n 40 "$out" >&2
        die "by hand (tag $tag): '$*' failed; its output is above"
    fi
}

count_files() { find "$1" -type f 2>/dev/null | wc -l; }
count_jars() { find "$1" -type f -name '*.jar' 2>/dev/null | wc -l; }
size_kib() { du -sk "$1" 2>/dev/null | cut -f1; }

# ---------------------------------------------------------------------------------------------
# Warm-up.

say "warm-up: one Kiln build with --mvncache"
kiln_build warmup-kiln warmup --mvncache
HOME_AGENT=$(awk -F'\t' '$1 == "warmup-kiln" && $2 == "agent" { print $3 }' "$RAW")
SETTINGS=$DATA/agents/$HOME_AGENT/maven-settings.xml
[[ -f $SETTINGS ]] || die "no Maven settings at $SETTINGS"
KILN_CACHE=$DATA/agents/$HOME_AGENT/mvncache/protected/demo   # main is the default branch
say "  home agent $HOME_AGENT; Maven settings $SETTINGS"
say "warm-up: one by-hand run (cache $HANDCACHE)"
hand_build warmup-hand hand-warmup "$HANDCACHE"

# ---------------------------------------------------------------------------------------------
# 2. N pairs.

HAND_FILES_BEFORE=$(count_files "$HANDCACHE")
KILN_FILES_BEFORE=$(count_files "$KILN_CACHE")
for (( i = 1; i <= RUNS; i++ )); do
    record "run$i" load "$(loadavg)"
    say "run $i/$RUNS: Kiln build (tag kiln-$i)"
    kiln_build "run$i-kiln" "kiln-$i" --mvncache
    say "run $i/$RUNS: by hand (tag hand-$i)"
    hand_build "run$i-hand" "hand-$i" "$HANDCACHE"
    say "  Kiln $(awk -F'\t' -v l="run$i-kiln" '$1 == l && $2 == "wall_ms" { print $3 }' "$RAW") ms, by hand $(awk -F'\t' -v l="run$i-hand" '$1 == l && $2 == "wall_ms" { print $3 }' "$RAW") ms"
done
record cache hand_new_files_during_runs $(( $(count_files "$HANDCACHE") - HAND_FILES_BEFORE ))
record cache kiln_new_files_during_runs $(( $(count_files "$KILN_CACHE") - KILN_FILES_BEFORE ))

# ---------------------------------------------------------------------------------------------
# 3. Cold vs warm Maven cache.

say "Maven cache: Kiln build with --no-mvncache (cold: a throwaway cache in the container)"
kiln_build cold-kiln kiln-cold --no-mvncache
say "Maven cache: Kiln build with --mvncache (warm)"
before=$(count_files "$KILN_CACHE")
kiln_build warm-kiln kiln-warm --mvncache
record cache kiln_warm_new_files $(( $(count_files "$KILN_CACHE") - before ))
say "Maven cache: by hand with an empty cache folder (cold)"
COLD=$TMP/cold-m2
hand_build cold-hand hand-cold "$COLD"
record cache hand_cold_files "$(count_files "$COLD")"
record cache hand_cold_jars "$(count_jars "$COLD")"
record cache hand_cold_kib "$(size_kib "$COLD")"
say "Maven cache: by hand with the warm cache folder"
before=$(count_files "$HANDCACHE")
hand_build warm-hand hand-warm "$HANDCACHE"
record cache hand_warm_new_files $(( $(count_files "$HANDCACHE") - before ))
record cache hand_warm_files "$before"
record cache hand_warm_jars "$(count_jars "$HANDCACHE")"

# ---------------------------------------------------------------------------------------------
# 4. Fetching an unchanged repository again: fresh clones and fetches into a by-hand mirror.

say "fetch: $RUNS fresh git clones and $RUNS git fetches into a by-hand mirror"
git clone --quiet --mirror "$GIT_URL" "$TMP/mirror.git"
for (( i = 1; i <= RUNS; i++ )); do
    t0=$(now_ms); git clone --quiet "$GIT_URL" "$TMP/clone-$i"; t1=$(now_ms)
    record "fetch$i" clone_ms $(( t1 - t0 ))
    t0=$(now_ms); git -C "$TMP/mirror.git" fetch --quiet --prune origin; t1=$(now_ms)
    record "fetch$i" mirror_fetch_ms $(( t1 - t0 ))
    rm -rf "$TMP/clone-$i"
done

# ---------------------------------------------------------------------------------------------
# Diagnosis: the compile container through the Docker API the way Kiln runs it (create, start,
# POST /containers/ID/wait) vs the same container with its end found by polling
# GET /containers/ID/json every 250 ms. podman 4.3's compat /wait keeps the API service busy
# on one core for as long as the container runs, which a 2-core machine feels.

SOCK=$DATA/podman/podman.sock
docker_api() { curl -sS --unix-socket "$SOCK" -X "$1" -H 'Content-Type: application/json' "http://d/v1.41$2" "${@:3}"; }
# api_run LABEL wait|poll WORKSPACE
api_run() {
    local label=$1 mode=$2 w=$3 body id t0 t1 cpu0 cpu1 code
    rm -rf "$w/target"
    body=$(python3 -c 'import json, sys; print(json.dumps({"Image": sys.argv[1], "Cmd": ["sh", "-c", sys.argv[2]], "WorkingDir": "/workspace", "HostConfig": {"NetworkMode": "bridge", "Binds": [sys.argv[3] + ":/workspace", sys.argv[4] + ":/etc/maven/settings.xml:ro", sys.argv[5] + ":/root/.m2"]}}))' \
        "$BUILD_IMAGE" "$BUILD_COMMAND" "$w" "$SETTINGS" "$HANDCACHE")
    cpu0=$(podman_cpu_ms)
    t0=$(now_ms)
    id=$(docker_api POST /containers/create --data "$body" | python3 -c 'import json, sys; print(json.load(sys.stdin)["Id"])') \
        || die "the Docker API did not create the diagnosis container"
    docker_api POST "/containers/$id/start" >/dev/null
    if [[ $mode == wait ]]; then
        code=$(docker_api POST "/containers/$id/wait" | python3 -c 'import json, sys; print(json.load(sys.stdin)["StatusCode"])')
    else
        while docker_api GET "/containers/$id/json" | grep -q '"Running":true'; do sleep 0.25; done
        code=$(docker_api GET "/containers/$id/json" | python3 -c 'import json, sys; print(json.load(sys.stdin)["State"]["ExitCode"])')
    fi
    docker_api DELETE "/containers/$id?force=true" >/dev/null
    t1=$(now_ms)
    cpu1=$(podman_cpu_ms)
    [[ $code == 0 ]] || die "the diagnosis container ($mode) exited $code"
    record "$label" wall_ms $(( t1 - t0 ))
    record "$label" podman_cpu_ms $(( cpu1 - cpu0 ))
}
DIAG_RUNS=$(( RUNS < 3 ? RUNS : 3 ))
say "diagnosis: $DIAG_RUNS x the compile container through the Docker API, with /wait and with polling"
git clone --quiet "$GIT_URL" "$TMP/diag"
for (( i = 1; i <= DIAG_RUNS; i++ )); do
    api_run "diag$i-wait" wait "$TMP/diag"
    api_run "diag$i-poll" poll "$TMP/diag"
done

# Drop this run's tags from the local podman storage (the registry keeps them; same blobs).
for tag in warmup hand-warmup kiln-cold kiln-warm hand-cold hand-warm $(seq -f 'kiln-%g' 1 "$RUNS") $(seq -f 'hand-%g' 1 "$RUNS"); do
    podman untag "$REG/demo:$tag" >/dev/null 2>&1 || true
done
podman image prune -f >/dev/null 2>&1 || true

LOAD_END=$(loadavg)
say "load average at end: $LOAD_END"

# ---------------------------------------------------------------------------------------------
# 5. Tables.

OUT=$RESULTS_DIR/build-vs-hand-$STAMP.md
export RUNS DIAG_RUNS STAMP LOAD_START LOAD_END KILN DATA
export MACHINE="$(uname -srm), $(nproc) cores"
export PODMAN_VERSION="$(podman --version)"
export KILN_REV="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet HEAD -- Sources 2>/dev/null || echo ', Sources/ modified')"
python3 - "$RAW" "$OUT" <<'PY'
import statistics, sys
from collections import defaultdict

raw, out = sys.argv[1], sys.argv[2]
import os
E = os.environ
runs = int(E['RUNS'])
d = defaultdict(dict)
for line in open(raw):
    label, key, value = line.rstrip("\n").split("\t", 2)
    d[label][key] = value

def num(label, key):
    v = d[label].get(key, "")
    try: return float(v)
    except ValueError: return None

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def s(ms, digits=2):
    return "-" if ms is None else f"{ms / 1000:.{digits}f}"

def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"

def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)

def kiln_parts(label):
    """Where the wall-clock time of one kiln build went (ms)."""
    t0, t1 = num(label, "t0_ms"), num(label, "t1_ms")
    c, st, f = num(label, "createdAt_ms"), num(label, "startedAt_ms"), num(label, "finishedAt_ms")
    steps = sum(num(label, f"step_{n}_ms") or 0 for n in ("fetch", "compile", "image", "push"))
    if None in (t0, t1, c, st, f): return None
    return {"queue": c - t0, "pickup": st - c, "steps": steps, "between": (f - st) - steps, "tail": t1 - f}

rows, kt, ht, rt = [], [], [], []
for i in range(1, runs + 1):
    k, h = f"run{i}-kiln", f"run{i}-hand"
    kw, hw = num(k, "wall_ms"), num(h, "wall_ms")
    kt.append(kw); ht.append(hw)
    if kw and hw: rt.append(kw / hw)
    p = kiln_parts(k) or {}
    rows.append([i, d[k].get("agent", "?"), s(kw), s(hw), ratio(kw, hw),
                 " / ".join(s(num(k, f"step_{n}_ms")) for n in ("fetch", "compile", "image", "push")),
                 " / ".join(s(num(h, f"{n}_ms")) for n in ("clone", "run", "build", "push")),
                 s(p.get("pickup")), s(p.get("queue", 0) + p.get("between", 0) + p.get("tail", 0) if p else None),
                 s(num(k, "podman_cpu_ms"), 1), d[f"run{i}"].get("load", "?")])
mk, mh = med(kt), med(ht)
rows.append(["**median**", "", f"**{s(mk)}**", f"**{s(mh)}**", f"**{ratio(mk, mh)}**", "", "", "", "", "", ""])
agents = sorted({d[f"run{i}-kiln"].get("agent", "?") for i in range(1, runs + 1)})
med_ratio = med(rt)

steps = [("fetch vs git clone", "step_fetch_ms", "clone_ms"),
         ("compile vs podman run (mvn)", "step_compile_ms", "run_ms"),
         ("image vs podman build", "step_image_ms", "build_ms"),
         ("push vs podman push", "step_push_ms", "push_ms")]
srows = []
for name, kk, hk in steps:
    a = med([num(f"run{i}-kiln", kk) for i in range(1, runs + 1)])
    b = med([num(f"run{i}-hand", hk) for i in range(1, runs + 1)])
    srows.append([name, s(a), s(b), s(None if a is None or b is None else a - b), ratio(a, b)])
parts = [kiln_parts(f"run{i}-kiln") for i in range(1, runs + 1)]
parts = [p for p in parts if p]
for name, key, what in [("CLI start → build queued", "queue", "createdAt − command start"),
                        ("queued → agent started it", "pickup", "startedAt − createdAt"),
                        ("between/around steps on the agent", "between", "(finishedAt − startedAt) − Σ steps"),
                        ("build finished → CLI exited", "tail", "command end − finishedAt")]:
    srows.append([f"Kiln only: {name} ({what})", s(med([p[key] for p in parts])), "", "", ""])
srows.append(["CPU used by the podman API service meanwhile (not a step)",
              s(med([num(f"run{i}-kiln", "podman_cpu_ms") for i in range(1, runs + 1)]), 1),
              s(med([num(f"run{i}-hand", "podman_cpu_ms") for i in range(1, runs + 1)]), 1), "", ""])
srows.append(["**total** (wall clock)", f"**{s(mk)}**", f"**{s(mh)}**", f"**{s(None if mk is None or mh is None else mk - mh)}**", f"**{ratio(mk, mh)}**"])

c = d["cache"]
crows = [
    ["Kiln --no-mvncache (throwaway cache in the container)", s(num("cold-kiln", "step_compile_ms")), "not countable (cache lives and dies in the container); same resolution as by hand: see the next row"],
    ["by hand, empty cache folder", s(num("cold-hand", "run_ms")), f"{c.get('hand_cold_files', '?')} files ({c.get('hand_cold_jars', '?')} jars, {int(c.get('hand_cold_kib', 0)) // 1024} MiB) downloaded from the mirror"],
    ["Kiln --mvncache (warm, agent's cache)", s(num("warm-kiln", "step_compile_ms")), f"{c.get('kiln_warm_new_files', '?')} new files in the agent's cache ({c.get('kiln_new_files_during_runs', '?')} during the {runs} runs)"],
    ["by hand, warm cache folder", s(num("warm-hand", "run_ms")), f"{c.get('hand_warm_new_files', '?')} new files in the by-hand cache of {c.get('hand_warm_files', '?')} ({c.get('hand_new_files_during_runs', '?')} during the {runs} runs)"],
]

fetched = sorted({d[f"run{i}-kiln"].get("fetched", "?") for i in range(1, runs + 1)})
frows = [
    [f"Kiln fetch step, repeat build (libgit2 fetch into the agent's mirror + checkout), median of {runs}",
     s(med([num(f"run{i}-kiln", "step_fetch_ms") for i in range(1, runs + 1)]), 3), ", ".join(fetched)],
    [f"Kiln fetch step, warm-up build (first build of this farm run)", s(num("warmup-kiln", "step_fetch_ms"), 3), d["warmup-kiln"].get("fetched", "?")],
    [f"fresh git clone, median of {runs}", s(med([num(f"fetch{i}", "clone_ms") for i in range(1, runs + 1)]), 3), "whole repository"],
    [f"git fetch into an up-to-date by-hand mirror, median of {runs}", s(med([num(f"fetch{i}", "mirror_fetch_ms") for i in range(1, runs + 1)]), 3), "nothing new"],
]

diag_runs = int(E["DIAG_RUNS"])
drows = []
for mode, what in [("wait", "create, start, POST /containers/ID/wait while it runs, remove (what Kiln did before it waited for the log stream's end)"),
                   ("poll", "create, start, GET /containers/ID/json every 250 ms, remove")]:
    drows.append([what, s(med([num(f"diag{i}-{mode}", "wall_ms") for i in range(1, diag_runs + 1)])),
                  s(med([num(f"diag{i}-{mode}", "podman_cpu_ms") for i in range(1, diag_runs + 1)]), 1)])
drows.append(["by hand: podman run (CLI), median of the runs above", s(med([num(f"run{i}-hand", "run_ms") for i in range(1, runs + 1)])),
              s(med([num(f"run{i}-hand", "podman_cpu_ms") for i in range(1, runs + 1)]), 1)])

target = "met" if med_ratio is not None and med_ratio <= 1.10 else "NOT met"
md = f"""# Kiln build vs the same steps by hand ({E['STAMP']})

- Machine: `{E['MACHINE']}`; load average at start **{E['LOAD_START']}**, at end **{E['LOAD_END']}** (other work may share the machine)
- Kiln: `{E['KILN']}` (repository at {E['KILN_REV']}); {E['PODMAN_VERSION']}; data dir `{E['DATA']}`
- {runs} pairs, each a Kiln build (`kiln build demo --mvncache --follow`, wall clock of the command) then the same four steps by hand (git clone, podman run mvn, podman build, podman push) with a warm Maven cache, same podman storage, same Maven mirror.
- Kiln builds ran on: {", ".join(agents)} (warm-up on {d["warmup-kiln"].get("agent", "?")}).
- **Median ratio Kiln / by hand: {ratio(mk, mh)}** (median of per-run ratios {'-' if med_ratio is None else f'{med_ratio:.2f}'}); target ≤ 1.10: **{target}**.

## Per run (seconds)

Kiln steps and by-hand steps are fetch/compile/image/push and clone/run/build/push.
"Kiln overhead" is the wall clock not spent in Kiln's steps (CLI start, queueing, pickup,
bookkeeping between steps, log end); "podman svc CPU" is CPU time the podman API service
used during the Kiln build.

{table(["run", "agent", "Kiln", "by hand", "ratio", "Kiln steps", "by-hand steps", "pickup", "Kiln overhead", "podman svc CPU", "load (1/5/15 min)"], rows)}

## Per step, medians (seconds)

{table(["step", "Kiln", "by hand", "difference", "ratio"], srows)}

## Maven cache: cold vs warm (compile step, seconds)

The Maven mirror has no request counter endpoint: downloads are counted as files landing in
the by-hand cache folder.

{table(["build", "compile", "downloads"], crows)}

## Fetching an unchanged repository again (seconds)

{table(["what", "time", "transferred"], frows)}

## Diagnosis: waiting for the compile container through podman's Docker API (seconds)

The same container (warm by-hand cache) through the Docker API socket Kiln uses, median of
{diag_runs}; "podman svc CPU" is CPU time the podman API service used meanwhile.

{table(["how", "wall clock", "podman svc CPU"], drows)}
"""
open(out, "w").write(md)
print(md)
PY
say "results written to $OUT"
