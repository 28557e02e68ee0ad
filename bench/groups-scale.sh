#!/usr/bin/env bash
# groups-scale.sh: what many groups cost on three daemons (issue "growing a
# cluster"). Starts three plaintext daemons on loopback with no group, then:
#   1. creates NGROUPS groups at run time (waft admin create-group,
#      CREATES_AT_ONCE at a time; the last WRITE_GROUPS run the atomic
#      example, the others the counter) and times it;
#   2. waits until every group has a leader and is quiet on every node;
#   3. measures each daemon's idle CPU (utime+stime from /proc over IDLE_SECS)
#      and resident memory per group (VmRSS with the groups less VmRSS before);
#   4. stops all three (SIGTERM) and starts them again, and times how long
#      until every group has a leader again;
#   5. runs waft-bench with 64 clients writing over the WRITE_GROUPS groups
#      of the atomic example among them, next to 64 clients on one.
# Prints one line per figure; nothing is left running.
#
# Environment: NGROUPS [1000], WRITE_GROUPS [100], CREATES_AT_ONCE [4],
# IDLE_SECS [10], BENCH_SECS [8], WAFT_BIN [target/release/waft],
# BENCH_BIN [target/release/waft-bench], GUEST_DIR
# [target/wasm32-wasip2/release]. Needs python3 (to read status JSON).
set -euo pipefail

cd "$(dirname "$0")/.."
NGROUPS=${NGROUPS:-1000}
WRITE_GROUPS=${WRITE_GROUPS:-100}
CREATES_AT_ONCE=${CREATES_AT_ONCE:-4}
IDLE_SECS=${IDLE_SECS:-10}
BENCH_SECS=${BENCH_SECS:-8}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
WAFT_BIN=${WAFT_BIN:-$TARGET_DIR/release/waft}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/waft-bench}
GUEST_DIR=${GUEST_DIR:-$TARGET_DIR/wasm32-wasip2/release}
COUNTER=$GUEST_DIR/waft_counter.wasm
ATOMIC=$GUEST_DIR/waft_atomic.wasm
for f in "$WAFT_BIN" "$BENCH_BIN" "$COUNTER" "$ATOMIC"; do
    [ -e "$f" ] || { echo "groups-scale: $f is missing; run cargo build --release -p waft -p waft-bench and cargo xtask guests" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "groups-scale: needs python3" >&2; exit 2; }

ROOT=$(mktemp -d /var/tmp/waft-groups-scale.XXXXXX)
PIDS=(0 0 0)
ADDRS=(127.0.0.1:7301 127.0.0.1:7302 127.0.0.1:7303)
cleanup() {
    for p in "${PIDS[@]}"; do [ "$p" != 0 ] && kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$ROOT"
}
trap cleanup EXIT
say() { echo "groups-scale: $*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

start() {
    local i=$1 peers=()
    for j in 0 1 2; do [ "$j" != "$i" ] && peers+=(--peer "$((j + 1))=${ADDRS[$j]}"); done
    "$WAFT_BIN" serve --id $((i + 1)) --listen "${ADDRS[$i]}" --data-dir "$ROOT/node-$((i + 1))" \
        --plaintext "${peers[@]}" >>"$ROOT/node-$((i + 1)).log" 2>&1 &
    PIDS[$i]=$!
}
stop_all() {
    for i in 0 1 2; do kill -TERM "${PIDS[$i]}"; done
    for i in 0 1 2; do wait "${PIDS[$i]}" || true; PIDS[$i]=0; done
}
wait_serving() {
    for i in 0 1 2; do
        until "$WAFT_BIN" admin --addr "${ADDRS[$i]}" nodes >/dev/null 2>&1; do sleep 0.1; done
    done
}
# Counts, over the three nodes, groups with an agreed leader ($1=leaders)
# or quiet everywhere ($1=quiet); prints the count.
count() {
    local what=$1 files=()
    for i in 0 1 2; do
        "$WAFT_BIN" status --addr "${ADDRS[$i]}" --json >"$ROOT/status-$i.json" 2>/dev/null || echo '{}' >"$ROOT/status-$i.json"
        files+=("$ROOT/status-$i.json")
    done
    python3 - "$what" "${files[@]}" <<'EOF'
import json, sys
what, files = sys.argv[1], sys.argv[2:]
views = []
for f in files:
    try:
        views.append({g["group"]: g for g in json.load(open(f)).get("groups", [])})
    except Exception:
        views.append({})
groups = set().union(*[v.keys() for v in views])
n = 0
for g in groups:
    seen = [v.get(g) for v in views]
    if any(s is None for s in seen):
        continue
    leaders = {s.get("leader_id", 0) for s in seen}
    if what == "leaders":
        n += len(leaders) == 1 and 0 not in leaders
    else:
        n += all(s.get("quiesced", False) for s in seen)
print(n)
EOF
}
wait_count() {
    local what=$1 want=$2 deadline=$(( $(date +%s) + $3 ))
    while [ "$(count "$what")" -lt "$want" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || { say "gave up waiting for $want groups $what (have $(count "$what"))"; return 1; }
        sleep 0.5
    done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

for i in 0 1 2; do start "$i"; done
wait_serving
sleep 2
BASE_RSS=()
for i in 0 1 2; do BASE_RSS[$i]=$(rss_kib "${PIDS[$i]}"); done
say "daemons up, no groups: RSS ${BASE_RSS[*]} KiB"

create() { # first last module
    seq "$1" "$2" | xargs -P "$CREATES_AT_ONCE" -I{} "$WAFT_BIN" admin --addr "${ADDRS[0]}" --group {} create-group \
        --peers 1,2,3 --module "$3" >/dev/null 2>>"$ROOT/create-errors.log" || {
        say "creates failed:"; tail -5 "$ROOT/create-errors.log"; exit 1; }
}
COUNTERS=$((NGROUPS - WRITE_GROUPS))
t0=$(now)
create 1 "$COUNTERS" "$COUNTER"
create $((COUNTERS + 1)) "$NGROUPS" "$ATOMIC"
say "created $NGROUPS groups ($COUNTERS counters, $WRITE_GROUPS atomic) in $(since "$t0") s"
wait_count leaders "$NGROUPS" 600
say "all $NGROUPS have a leader $(since "$t0") s after the first create"
wait_count quiet "$NGROUPS" 600
say "all $NGROUPS quiet $(since "$t0") s after the first create"

HZ=$(getconf CLK_TCK)
before=()
for i in 0 1 2; do before[$i]=$(cpu_ticks "${PIDS[$i]}"); done
sleep "$IDLE_SECS"
for i in 0 1 2; do
    used=$(( $(cpu_ticks "${PIDS[$i]}") - before[i] ))
    rss=$(rss_kib "${PIDS[$i]}")
    python3 -c "import sys; u,hz,s,rss,base,n,node=map(float,sys.argv[1:]); print(f'groups-scale: node {int(node)}: idle CPU {100*u/hz/s:.2f}% of a core; RSS {rss/1024:.0f} MiB, {(rss-base)/n:.0f} KiB per group')" \
        "$used" "$HZ" "$IDLE_SECS" "$rss" "${BASE_RSS[$i]}" "$NGROUPS" $((i + 1))
done

stop_all
t0=$(now)
for i in 0 1 2; do start "$i"; done
wait_count leaders "$NGROUPS" 600
say "whole-cluster restart: all $NGROUPS groups have a leader $(since "$t0") s after the start"

first=$((COUNTERS + 1))
endpoints=$(IFS=,; echo "${ADDRS[*]}")
for spread in 1 "$WRITE_GROUPS"; do
    "$BENCH_BIN" --target waft --endpoints "$endpoints" --group "$first" --groups "$spread" --clients 64 --conns 3 \
        --read-ratio 0 --duration-secs "$BENCH_SECS" --server-pids "$(IFS=,; echo "${PIDS[*]}")" --quiet \
        --json-out "$ROOT/bench-$spread.json" >/dev/null
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); r=r.get('report', r); print('groups-scale: 64 clients writing over', sys.argv[2], 'group(s):', round(r['ops_per_sec']), 'ops/s, p50', r['latency_us']['writes']['p50_us'], 'us, server CPU', r.get('server_cpu_us_per_op'), 'us/op')" \
        "$ROOT/bench-$spread.json" "$spread"
done
