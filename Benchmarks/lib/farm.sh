# Benchmarks/lib/farm.sh: sourced by the benchmark scripts that run a farm of their own with
# `kiln up` (cache-writes.sh, reuse-vs-build.sh). The caller defines `say` and `die`, sets
# KILN and DATA, and calls farm_stop from its EXIT trap. Kept apart from build-vs-hand.sh,
# whose farm start also records podman's CPU time.

UP_PID=

# Milliseconds since the epoch, without forking (bash 5's EPOCHREALTIME).
now_ms() { local t=${EPOCHREALTIME/./}; echo $(( 10#$t / 1000 )); }

# farm_start LOG TIMEOUT ARGS...: `kiln up --no-demo --data-dir DATA ARGS` in a session of its
# own (a Ctrl-C reaches it only through the caller's trap), its output in LOG; waits until it
# prints "Kiln is running", at most TIMEOUT seconds. The caller's environment reaches the
# processes it starts (KILN_CACHE_WRITES=direct farm_start …).
farm_start() {
    local log=$1 timeout=$2
    shift 2
    setsid "$KILN" up --no-demo --data-dir "$DATA" "$@" >"$log" 2>&1 </dev/null &
    UP_PID=$!
    local deadline=$(( SECONDS + timeout ))
    until grep -qs "Kiln is running" "$log"; do
        kill -0 "$UP_PID" 2>/dev/null || { UP_PID=; tail -n 30 "$log" >&2; die "kiln up exited before it printed \"Kiln is running\" (see $log)"; }
        (( SECONDS <= deadline )) || { tail -n 30 "$log" >&2; die "kiln up did not start within $timeout s (see $log)"; }
        sleep 1
    done
}

# farm_stop: SIGTERM to `kiln up` (which stops everything it started), SIGKILL after 90 s.
farm_stop() {
    [[ -n $UP_PID ]] || return 0
    if kill -0 "$UP_PID" 2>/dev/null; then
        say "stopping the farm (kiln up, pid $UP_PID)"
        kill -TERM "$UP_PID" 2>/dev/null || true
        local i
        for (( i = 0; i < 90; i++ )); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 1; done
        kill -0 "$UP_PID" 2>/dev/null && { say "kiln up did not stop within 90 s: SIGKILL"; kill -KILL "$UP_PID" 2>/dev/null || true; }
    fi
    wait "$UP_PID" 2>/dev/null || true
    UP_PID=
}
