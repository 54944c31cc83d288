#!/usr/bin/env bash
# What etcd's password logins cost at bcrypt cost 10 (etcd's default) and 4 (what Kiln's etcd
# runs with: every etcd password Kiln makes is 256 random bits, where bcrypt's work factor adds
# nothing). 500 agents logging in at once stalled an etcd at cost 10 (docs/scale.md); this
# times N logins sent C at a time through etcd's JSON gateway, for each cost.
#
#   Benchmarks/etcd-logins.sh [--logins 200] [--concurrency 50] [--port 23790]
#
# Starts its own etcd on 127.0.0.1 (a temporary data dir), stops it by PID, prints a table,
# and writes it to Benchmarks/results/etcd-logins-DATE.md. Needs etcd, etcdctl and curl.
set -euo pipefail
cd "$(dirname "$0")"
logins=200 concurrency=50 port=23790
while [ $# -gt 0 ]; do
    case "$1" in
        --logins) logins=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        -h|--help) sed -n 2,10p "$0"; exit 0 ;;
        *) echo "etcd-logins: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
peer=$((port + 1))
work=$(mktemp -d /tmp/kiln-etcd-logins.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
password=$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | head -c 40)
endpoint="http://127.0.0.1:$port"
out="results/etcd-logins-$(date -u +%Y-%m-%d-%H%M%S).md"
{
    echo "# etcd password logins by bcrypt cost ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "etcd $(etcd --version | head -1 | awk '{print $3}'), $logins logins, $concurrency at a time, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| bcrypt cost | logins/s | wall time | etcd CPU (s) |"
    echo "|---:|---:|---:|---:|"
} > "$out"
for cost in 10 4; do
    rm -rf "$work/data"
    etcd --name b --data-dir "$work/data" --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
         --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
         --initial-cluster "b=http://127.0.0.1:$peer" --bcrypt-cost "$cost" --log-level error >"$work/etcd.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
    etcdctl --endpoints "$endpoint" user add "root:$password" >/dev/null
    etcdctl --endpoints "$endpoint" user add "agent:$password" >/dev/null
    etcdctl --endpoints "$endpoint" auth enable >/dev/null
    body="{\"name\":\"agent\",\"password\":\"$password\"}"
    cpu_before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    start=$(date +%s.%N)
    seq 1 "$logins" | xargs -P "$concurrency" -I{} curl -s -o /dev/null -w '%{http_code}\n' \
        -X POST -d "$body" "$endpoint/v3/auth/authenticate" > "$work/codes"
    end=$(date +%s.%N)
    cpu_after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    ok=$(grep -c '^200$' "$work/codes" || true)
    [ "$ok" -eq "$logins" ] || { echo "etcd-logins: only $ok of $logins logins answered 200 at cost $cost" >&2; exit 1; }
    ticks=$(getconf CLK_TCK)
    awk -v c="$cost" -v n="$logins" -v s="$start" -v e="$end" -v b="$cpu_before" -v a="$cpu_after" -v t="$ticks" \
        'BEGIN { w = e - s; printf "| %d | %.0f | %.2f s | %.2f |\n", c, n / w, w, (a - b) / t }' >> "$out"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
cat "$out"
echo "written to Benchmarks/$out"
