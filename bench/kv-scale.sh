#!/usr/bin/env bash
# kv-scale.sh: write throughput, latency and memory as the key space grows,
# for the atomic example in memory (examples/atomic) and on the group's
# key-value store (examples/atomic-kv); prints one table.
#
#   bench/kv-scale.sh                                   # every case below
#   CASES="atomic-kv:5000000:prefill" bench/kv-scale.sh # one case
#   BENCH_SECS=30 bench/kv-scale.sh
#
# A case is MODULE:KEYS[:after=N|:prefill]. Each runs on a fresh NODES-node
# cluster on loopback: first, unmeasured, N random writes (after=N) or
# every key once (prefill); then BENCH_SECS of 64 writers, each write a set
# of one of KEYS keys picked at random (256-byte keys, as the atomic
# examples carry the payload in the key). The largest resident set of the
# nodes is sampled every half second during the measured run, and
# the disk the data directories take is read after it.
#
# Environment (defaults in brackets):
#   CASES [atomic:1000 atomic:100000 atomic:300000 atomic:2000000:after=870000
#          atomic-kv:1000 atomic-kv:100000 atomic-kv:300000
#          atomic-kv:2000000:after=870000 atomic-kv:5000000:prefill]
#   BENCH_SECS [15]; WARMUP_SECS [2]; CLIENTS [64]; CONNS [3]
#   WAFT_BIN [target/release/waft]; BENCH_BIN [target/release/waft-bench]
#   GUEST_DIR [target/wasm32-wasip2/release]
#   BENCH_ROOT [a new directory under ${TMPDIR:-/var/tmp}]: data and results
#   PORT_BASE [24700]: waft on +1..3
#   KEEP_DATA [0]: 1 keeps the data directories (results are always kept)
#   SERVE_FLAGS []: more flags for every node's `waft serve`, e.g.
#     --background-saves
#   NODES [3]: nodes in the cluster (each a voter of the group)
#
# Needs the release build and the guests: cargo build --release -p waft
# -p waft-bench && cargo xtask guests (run here when missing).

set -euo pipefail
cd "$(dirname "$0")/.."

CASES=${CASES:-"atomic:1000 atomic:100000 atomic:300000 atomic:2000000:after=870000 atomic-kv:1000 atomic-kv:100000 atomic-kv:300000 atomic-kv:2000000:after=870000 atomic-kv:5000000:prefill"}
BENCH_SECS=${BENCH_SECS:-15}
WARMUP_SECS=${WARMUP_SECS:-2}
CLIENTS=${CLIENTS:-64}
CONNS=${CONNS:-3}
WAFT_BIN=${WAFT_BIN:-target/release/waft}
BENCH_BIN=${BENCH_BIN:-target/release/waft-bench}
GUEST_DIR=${GUEST_DIR:-target/wasm32-wasip2/release}
PORT_BASE=${PORT_BASE:-24700}
KEEP_DATA=${KEEP_DATA:-0}
SERVE_FLAGS=${SERVE_FLAGS:-}
NODES=${NODES:-3}
ADDRS=()
for i in $(seq "$NODES"); do ADDRS+=("127.0.0.1:$((PORT_BASE + i))"); done
ENDPOINTS=$(IFS=,; echo "${ADDRS[*]}")

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'kv-scale: %s\n' "$*" >&2; exit 1; }

command -v jq >/dev/null || die "needs jq: apt-get install -y jq"
if [ ! -x "$WAFT_BIN" ] || [ ! -x "$BENCH_BIN" ]; then
    say "building: cargo build --release -p waft -p waft-bench"
    cargo build --release -p waft -p waft-bench
fi
if [ ! -f "$GUEST_DIR/waft_atomic.wasm" ] || [ ! -f "$GUEST_DIR/waft_atomic_kv.wasm" ]; then
    say "building the guests: cargo xtask guests"
    cargo xtask guests
fi

BENCH_ROOT=${BENCH_ROOT:-$(mktemp -d "${TMPDIR:-/var/tmp}/waft-kv-scale.XXXXXX")}
mkdir -p "$BENCH_ROOT/results"
PIDS=()

stop_all() {
    local pid
    [ "${#PIDS[@]}" = 0 ] && return 0
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 100); do
        local alive=0
        for pid in "${PIDS[@]}"; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}

on_exit() {
    local rc=$?
    set +e
    [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
    stop_all
    [ "$KEEP_DATA" = 1 ] || rm -rf "$BENCH_ROOT/data"
    [ "$rc" = 0 ] || say "failed (exit $rc); logs and results in $BENCH_ROOT"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_cluster() {
    local module=$1 logs=$2 i j
    rm -rf "${BENCH_ROOT:?}/data"
    for i in $(seq "$NODES"); do
        local peers=()
        for j in $(seq "$NODES"); do [ "$j" = "$i" ] || peers+=(--peer "$j=${ADDRS[j - 1]}"); done
        mkdir -p "$BENCH_ROOT/data/$i"
        "$WAFT_BIN" serve --id "$i" --listen "${ADDRS[i - 1]}" --data-dir "$BENCH_ROOT/data/$i" --plaintext \
            --group "1=$module" "${peers[@]}" $SERVE_FLAGS >"$logs-$i.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 60); do
        if "$BENCH_BIN" --endpoints "$ENDPOINTS" --clients 1 --ops 1 --warmup-secs 0 --quiet >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    die "the cluster did not become ready in 30 s; see $logs-*.log"
}

# Largest VmRSS (KiB) of the nodes, sampled until killed, into $1.
sample_rss() {
    local out=$1 max=0 pid rss
    while true; do
        for pid in "${PIDS[@]}"; do
            rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
            [ "${rss:-0}" -gt "$max" ] && max=$rss && echo "$max" >"$out"
        done
        sleep 0.5
    done
}

ROWS=()
for case in $CASES; do
    IFS=: read -r name keys extra <<<"$case"
    case "$name" in
        atomic) module="$GUEST_DIR/waft_atomic.wasm" ;;
        atomic-kv) module="$GUEST_DIR/waft_atomic_kv.wasm" ;;
        *) die "unknown module $name (atomic, atomic-kv)" ;;
    esac
    tag="$name-$keys${extra:+-$extra}"
    logs="$BENCH_ROOT/results/$tag"
    start_cluster "$module" "$logs"
    common=(--endpoints "$ENDPOINTS" --clients "$CLIENTS" --conns "$CONNS" --keys "$keys" --value-bytes 256)
    before=""
    case "${extra:-}" in
        after=*)
            n=${extra#after=}
            say "$tag: $n writes first"
            "$BENCH_BIN" "${common[@]}" --read-ratio 0 --ops "$n" --warmup-secs 0 --seed 7 --quiet >/dev/null
            before="after ${n} writes"
            ;;
        prefill)
            say "$tag: writing every key once first"
            start=$(date +%s)
            "$BENCH_BIN" "${common[@]}" --read-ratio 0.5 --ops 1 --warmup-secs 0 --seed 7 >/dev/null 2>"$logs.prefill"
            before="prefilled in $(($(date +%s) - start)) s"
            ;;
        "") before="from empty" ;;
        *) die "unknown case option $extra (after=N, prefill)" ;;
    esac
    echo 0 >"$logs.rss"
    sample_rss "$logs.rss" &
    SAMPLER=$!
    say "$tag: ${BENCH_SECS}s of $CLIENTS writers ($before; load average $(cut -d' ' -f1 /proc/loadavg))"
    "$BENCH_BIN" "${common[@]}" --read-ratio 0 --duration-secs "$BENCH_SECS" --warmup-secs "$WARMUP_SECS" \
        --label "$tag" --json-out "$logs.json" 2>"$logs.progress" >/dev/null || say "$tag failed; see $logs.progress"
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
    disk=$(du -sm "$BENCH_ROOT/data" | cut -f1)
    stop_all
    if [ -f "$logs.json" ]; then
        ROWS+=("$(jq -r --arg tag "$tag" --arg before "$before" --arg rss "$(cat "$logs.rss")" --arg disk "$disk" \
            '"| \($tag) | \($before) | \(.ops_per_sec | floor) | \(.latency_us.writes.p99_us / 1000) | \(.latency_us.writes.p999_us / 1000) | \(($rss | tonumber) / 1024 | floor) | \($disk) |"' \
            "$logs.json")")
    fi
done

echo "| case | before the run | write ops/s | p99 ms | p99.9 ms | largest node RSS MiB | data MiB ($NODES nodes) |"
echo "|---|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
say "results (JSON per run, progress, node logs): $BENCH_ROOT/results"
