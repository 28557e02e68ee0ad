#!/usr/bin/env bash
# etcd-vs-waft.sh: the same load, by the same code (waft-bench), against a
# 3-member etcd cluster and a 3-node waft cluster on loopback; prints one table.
#
#   bench/etcd-vs-waft.sh                 # every workload, 10 s each
#   BENCH_SECS=60 bench/etcd-vs-waft.sh   # longer runs
#   WORKLOADS="write-64 read-64" SYSTEMS=etcd bench/etcd-vs-waft.sh
#   SYSTEMS="etcd waft waft-native" WORKLOADS="write-16 write-64" bench/etcd-vs-waft.sh
#   ROUNDS=3 bench/etcd-vs-waft.sh        # every pair three times; the table shows medians
#
# Both systems fsync before acknowledging (etcd's WAL by default; waft's
# RocksDB log always) and keep their data under one root on the same disk.
# Every run starts a fresh cluster and stops it after, one system at a time,
# the two taking turns workload by workload. The bench client runs on the
# same machine as the servers and shares its cores with them.
#
# Workloads (256-byte payloads, 1000 keys, every client spread over the three
# members round-robin):
#   write-1, write-16, write-64   100% writes at 1, 16, 64 clients
#                                 (etcd: put; waft: atomic set, payload in the key)
#   read-64                       100% linearizable reads at 64 clients
#   mix-64                        90% linearizable reads / 10% writes at 64 clients
#
# Systems: etcd; waft (the atomic example as a wasm component); waft-native
# (the same logic built into the host, bench-only: a module file reading
# `waft-bench-native:atomic`, which only a waft built with `--features
# bench-native` accepts). waft-native shows what the wasm sandbox costs in
# the whole write path; with it in SYSTEMS, waft is built with that feature
# and both waft systems run that one binary. waft-nodigest is waft with
# state digests off (--digest-interval 0), to pair against waft for what
# digests cost. etcd-tls and waft-tls are etcd and waft with TLS on every
# connection, mutual (client certificates checked: etcd's --client-cert-auth
# and --peer-client-cert-auth, waft's TLS with a users file), certificates
# from `waft certs init` (ECDSA P-256).
#
# Environment (defaults in brackets):
#   BENCH_SECS [10] measured seconds per run; WARMUP_SECS [2]
#   WORKLOADS ["write-1 write-16 write-64 read-64 mix-64"]; SYSTEMS ["etcd waft"]
#   ROUNDS [1]: runs of every (workload, system); the table shows each one's median
#   CONNS [one per client]: gRPC connections a run's clients share, the same
#     for both systems (capped at the run's clients). waft's client multiplexes
#     the proposes and queries of the clients sharing a connection onto one
#     pipeline stream, many to a message; etcd's clients share the HTTP/2
#     connection, one stream per request.
#   WAFT_BIN [target/release/waft]; BENCH_BIN [target/release/waft-bench]
#   FLOOR_BIN [target/release/waft-floor]: with write-1 among the workloads,
#     measures the floor under one replicated write on the same disk and
#     loopback (two fdatasyncs and two round trips, medians) and prints each
#     system's write-1 p50 against it
#   WAFT_BASE_BIN: the waft binary of system waft-base, another build (say,
#     main before a change) run with the same module, for a paired
#     before/after table: SYSTEMS="etcd waft-base waft"
#   WAFT_ATOMIC [target/wasm32-wasip2/release/waft_atomic.wasm]
#   BENCH_ROOT [a new directory under ${TMPDIR:-/var/tmp}]: data and results
#   PORT_BASE [23700]: etcd clients +1..3, etcd peers +11..13, waft +21..23
#   KEEP_DATA [0]: 1 keeps the data directories (results are always kept)
#
# Installs etcd (Debian's etcd-server) and jq with apt-get when missing, and
# builds waft and waft-bench (cargo build --release) and the atomic module
# (cargo xtask guests) when missing. Every process it starts is stopped on
# exit, failure and Ctrl-C included.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BENCH_SECS=${BENCH_SECS:-10}
WARMUP_SECS=${WARMUP_SECS:-2}
WORKLOADS=${WORKLOADS:-"write-1 write-16 write-64 read-64 mix-64"}
SYSTEMS=${SYSTEMS:-"etcd waft"}
ROUNDS=${ROUNDS:-1}
WAFT_BIN=${WAFT_BIN:-$TARGET_DIR/release/waft}
WAFT_BASE_BIN=${WAFT_BASE_BIN:-}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/waft-bench}
FLOOR_BIN=${FLOOR_BIN:-$TARGET_DIR/release/waft-floor}
WAFT_ATOMIC=${WAFT_ATOMIC:-$TARGET_DIR/wasm32-wasip2/release/waft_atomic.wasm}
PORT_BASE=${PORT_BASE:-23700}
KEEP_DATA=${KEEP_DATA:-0}
CONNS=${CONNS:-}
KEYS=1000
VALUE_BYTES=256
WAFT_GROUP=1

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'etcd-vs-waft: %s\n' "$*" >&2; exit 1; }

# --- what the run needs -------------------------------------------------------

apt_install() {
    [ "$(id -u)" = 0 ] || die "$1 is missing; install it with: sudo apt-get install -y $2"
    say "installing $2 (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

command -v jq >/dev/null || apt_install jq jq
if [[ " $SYSTEMS " == *" etcd "* ]]; then
    # Debian installs the server as /usr/bin/etcd.
    command -v etcd >/dev/null || apt_install etcd etcd-server
fi
if [[ " $SYSTEMS " == *" etcd-tls "* ]]; then
    command -v etcd >/dev/null || apt_install etcd etcd-server
fi
WANTS_WAFT=0
# The -tls systems need waft too: `waft certs init` writes their certificates.
[[ " $SYSTEMS " == *" waft "* || " $SYSTEMS " == *" waft-native "* || " $SYSTEMS " == *" waft-base "* || " $SYSTEMS " == *" waft-nodigest "* || " $SYSTEMS " == *"-tls "* ]] && WANTS_WAFT=1
if [[ " $SYSTEMS " == *" waft-native "* ]]; then
    # Always: a waft built without the feature refuses the native module
    # file, and cargo rebuilds only what changed.
    say "building waft with bench-native modules: cargo build --release -p waft -p waft-bench --features waft/bench-native"
    cargo build --release -p waft -p waft-bench --features waft/bench-native
elif [ ! -x "$BENCH_BIN" ] || { [ "$WANTS_WAFT" = 1 ] && [ ! -x "$WAFT_BIN" ]; }; then
    say "building waft and waft-bench: cargo build --release -p waft -p waft-bench (a cold build takes ~25 min on two cores)"
    cargo build --release -p waft -p waft-bench
fi
if [[ " $SYSTEMS " == *" waft"* ]] && [ ! -f "$WAFT_ATOMIC" ]; then
    say "building the guest modules: cargo xtask guests"
    cargo xtask guests
fi
[ -x "$BENCH_BIN" ] || die "no waft-bench at $BENCH_BIN"

# --- processes, and stopping them whatever happens ----------------------------

BENCH_ROOT=${BENCH_ROOT:-$(mktemp -d "${TMPDIR:-/var/tmp}/waft-bench.XXXXXX")}
mkdir -p "$BENCH_ROOT/results"
PIDS=()

stop_all() {
    local pid alive
    [ "${#PIDS[@]}" = 0 ] && return 0
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # A clean stop first (waft syncs and closes RocksDB on SIGTERM); after 5 s, KILL.
    for _ in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        if [ "$alive" = 0 ]; then break; fi
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}

on_exit() {
    local rc=$?
    # Whatever fails from here on, every step still runs.
    set +e
    stop_all
    if [ "$KEEP_DATA" != 1 ]; then rm -rf "$BENCH_ROOT/etcd" "$BENCH_ROOT/waft" "$BENCH_ROOT/atomic.native"; fi
    [ "$rc" = 0 ] || say "failed (exit $rc); logs and results in $BENCH_ROOT"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_child OUT ERR CMD...: runs CMD in the background, its stdout to OUT
# (- for the script's own) and stderr to ERR, and waits for it. bash runs a trap only once the foreground
# command ends, but interrupts `wait` at once, so a TERM stops the bench
# mid-run too (on_exit stops the child with the servers). The redirections
# are the child's alone: on the call they would also swallow on_exit's words.
run_child() {
    local out=$1 err=$2
    shift 2
    if [ "$out" = - ]; then "$@" 2>"$err" & else "$@" >"$out" 2>"$err" & fi
    local pid=$! rc=0 p kept=()
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    PIDS=("${kept[@]}")
    return "$rc"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

need_ports() {
    local p
    for p in "$@"; do port_free "$p" || die "port $p on 127.0.0.1 is in use; set PORT_BASE to another range"; done
}

ETCD_CLIENT=("127.0.0.1:$((PORT_BASE + 1))" "127.0.0.1:$((PORT_BASE + 2))" "127.0.0.1:$((PORT_BASE + 3))")
ETCD_PEER=("127.0.0.1:$((PORT_BASE + 11))" "127.0.0.1:$((PORT_BASE + 12))" "127.0.0.1:$((PORT_BASE + 13))")
WAFT_ADDR=("127.0.0.1:$((PORT_BASE + 21))" "127.0.0.1:$((PORT_BASE + 22))" "127.0.0.1:$((PORT_BASE + 23))")

CERTS="$BENCH_ROOT/certs"

# The certificates of the -tls systems, written once per bench root.
ensure_certs() {
    [ -f "$CERTS/ca.pem" ] || "$WAFT_BIN" certs init "$CERTS" --nodes 1,2,3 >/dev/null
}

# The bench client's TLS flags for a system (none unless it is a -tls one).
client_tls() {
    case "$1" in
        *-tls) echo "--tls-ca $CERTS/ca.pem --tls-cert $CERTS/client.pem --tls-key $CERTS/client.key" ;;
    esac
}

start_etcd() {
    start_etcd_with http
}

start_etcd-tls() {
    ensure_certs
    start_etcd_with https
}

start_etcd_with() {
    local scheme=$1
    need_ports "${ETCD_CLIENT[@]##*:}" "${ETCD_PEER[@]##*:}"
    local cluster="" i
    for i in 1 2 3; do cluster+="${cluster:+,}e$i=$scheme://${ETCD_PEER[i - 1]}"; done
    for i in 1 2 3; do
        mkdir -p "$BENCH_ROOT/etcd"
        local tls=()
        if [ "$scheme" = https ]; then
            tls=(--cert-file "$CERTS/node-$i.pem" --key-file "$CERTS/node-$i.key" --trusted-ca-file "$CERTS/ca.pem"
                --client-cert-auth --peer-cert-file "$CERTS/node-$i.pem" --peer-key-file "$CERTS/node-$i.key"
                --peer-trusted-ca-file "$CERTS/ca.pem" --peer-client-cert-auth)
        fi
        # fsync stays on: etcd syncs its WAL before acknowledging unless told
        # --unsafe-no-fsync, which is not given here.
        etcd --name "e$i" --data-dir "$BENCH_ROOT/etcd/$i" \
            --listen-client-urls "$scheme://${ETCD_CLIENT[i - 1]}" --advertise-client-urls "$scheme://${ETCD_CLIENT[i - 1]}" \
            --listen-peer-urls "$scheme://${ETCD_PEER[i - 1]}" --initial-advertise-peer-urls "$scheme://${ETCD_PEER[i - 1]}" \
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token waft-bench \
            "${tls[@]}" >"$LOGS-$i.log" 2>&1 &
        PIDS+=($!)
    done
}

start_waft() {
    start_waft_with "$WAFT_ATOMIC"
}

# waft with TLS and the users file `waft certs init` writes (the bench signs
# in as its `client`, write:*).
start_waft-tls() {
    ensure_certs
    WAFT_TLS=1 start_waft_with "$WAFT_ATOMIC"
}

# The same build with state digests off (--digest-interval 0): what the
# replicas' digests and verdicts cost, paired with `waft` in one run.
start_waft-nodigest() {
    WAFT_SERVE_ARGS="--digest-interval 0" start_waft_with "$WAFT_ATOMIC"
}

# The atomic example's logic built into the host (see host/runtime/src/native.rs).
start_waft-native() {
    printf 'waft-bench-native:atomic\n' >"$BENCH_ROOT/atomic.native"
    start_waft_with "$BENCH_ROOT/atomic.native"
}

# Another waft build (WAFT_BASE_BIN, e.g. main before a change) with the
# same module: a paired before/after run in one table.
start_waft-base() {
    [ -x "$WAFT_BASE_BIN" ] || die "waft-base needs WAFT_BASE_BIN, a waft binary to compare with"
    WAFT_BIN=$WAFT_BASE_BIN start_waft_with "$WAFT_ATOMIC"
}

start_waft_with() {
    local module=$1
    need_ports "${WAFT_ADDR[@]##*:}"
    local i j
    for i in 1 2 3; do
        local peers=()
        for j in 1 2 3; do [ "$j" = "$i" ] || peers+=(--peer "$j=${WAFT_ADDR[j - 1]}"); done
        mkdir -p "$BENCH_ROOT/waft"
        # shellcheck disable=SC2086 # WAFT_SERVE_ARGS: whole words by design
        # Plaintext is chosen explicitly, by builds that know the flag (a
        # WAFT_BASE_BIN from before TLS serves plaintext without it).
        local security=()
        "$WAFT_BIN" serve --help 2>/dev/null | grep -q -- --plaintext && security=(--plaintext)
        if [ "${WAFT_TLS:-0}" = 1 ]; then
            security=(--tls-ca "$CERTS/ca.pem" --tls-cert "$CERTS/node-$i.pem" --tls-key "$CERTS/node-$i.key"
                --users "$CERTS/users.toml")
        fi
        "$WAFT_BIN" serve --id "$i" --listen "${WAFT_ADDR[i - 1]}" --data-dir "$BENCH_ROOT/waft/$i" "${security[@]}" \
            --group "$WAFT_GROUP=$module" "${peers[@]}" ${WAFT_SERVE_ARGS:-} >"$LOGS-$i.log" 2>&1 &
        PIDS+=($!)
    done
}

endpoints() {
    local IFS=,
    case "$1" in
        etcd | etcd-tls) echo "${ETCD_CLIENT[*]}" ;;
        waft | waft-native | waft-base | waft-nodigest | waft-tls) echo "${WAFT_ADDR[*]}" ;;
    esac
}

# The bench client's --target: waft-native speaks waft's API.
target_of() {
    case "$1" in
        waft-native | waft-base | waft-nodigest | waft-tls) echo waft ;;
        etcd-tls) echo etcd ;;
        *) echo "$1" ;;
    esac
}

# One write through the bench itself: the cluster is up, has a leader, and
# takes the bench's requests.
wait_ready() {
    local system=$1 pid
    for _ in $(seq 60); do
        for pid in "${PIDS[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                head -n 3 "$LOGS"-*.log >&2
                die "a $system server exited at start; see $LOGS-*.log"
            fi
        done
        # shellcheck disable=SC2046 # client_tls: a list of words on purpose
        if run_child /dev/null /dev/null "$BENCH_BIN" --target "$(target_of "$system")" --endpoints "$(endpoints "$system")" \
            --group "$WAFT_GROUP" --clients 1 --ops 1 --warmup-secs 0 --quiet $(client_tls "$system"); then
            return 0
        fi
        sleep 0.5
    done
    die "$system did not become ready in 30 s; see $LOGS-*.log"
}

workload_args() {
    local clients
    case "$1" in
        write-1) clients=1 && echo "--read-ratio 0" ;;
        write-16) clients=16 && echo "--read-ratio 0" ;;
        write-64) clients=64 && echo "--read-ratio 0" ;;
        read-64) clients=64 && echo "--read-ratio 1 --consistency linearizable" ;;
        mix-64) clients=64 && echo "--read-ratio 0.9 --consistency linearizable" ;;
        *) die "unknown workload $1 (write-1 write-16 write-64 read-64 mix-64)" ;;
    esac
    echo "--clients $clients"
    if [ -n "$CONNS" ]; then echo "--conns $((CONNS < clients ? CONNS : clients))"; fi
}

# --- the runs -----------------------------------------------------------------

say "root $BENCH_ROOT on $(df --output=source,fstype "$BENCH_ROOT" | tail -1 | tr -s ' '); $(nproc) cores"
if [ "$(df --output=fstype "$BENCH_ROOT" | tail -1)" = tmpfs ]; then
    say "warning: $BENCH_ROOT is tmpfs, where fsync costs nothing; set TMPDIR to a disk for real numbers"
fi
for w in $WORKLOADS; do workload_args "$w" >/dev/null; done

for system in $SYSTEMS; do
    case "$system" in
        etcd) say "etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}') (etcd-server)" ;;
        waft) say "waft $WAFT_BIN, group $WAFT_GROUP = $WAFT_ATOMIC" ;;
        waft-native) say "waft-native $WAFT_BIN, group $WAFT_GROUP = the atomic logic built in (bench-native)" ;;
        waft-base) say "waft-base $WAFT_BASE_BIN, group $WAFT_GROUP = $WAFT_ATOMIC" ;;
        waft-nodigest) say "waft-nodigest $WAFT_BIN --digest-interval 0, group $WAFT_GROUP = $WAFT_ATOMIC" ;;
        etcd-tls) say "etcd-tls: etcd with mutual TLS for clients and peers" ;;
        waft-tls) say "waft-tls $WAFT_BIN with TLS and a users file, group $WAFT_GROUP = $WAFT_ATOMIC" ;;
        *) die "unknown system $system (etcd, waft, waft-native, waft-base, waft-nodigest, etcd-tls, waft-tls)" ;;
    esac
done

# Each run gets a fresh cluster, and the systems take turns workload by
# workload: the two runs of a pair are minutes apart at most, so a slow drift
# in the machine's other load (a build next door) tilts a ratio less, and no
# run inherits the log, snapshots or compaction debt of the one before.
# With ROUNDS > 1, every round runs every pair again, so the rounds of one
# pair spread over the whole run and its median shrugs off a noisy minute.
for round in $(seq "$ROUNDS"); do
for w in $WORKLOADS; do
    for system in $SYSTEMS; do
        LOGS="$BENCH_ROOT/results/$w-$system.r$round"
        rm -rf "${BENCH_ROOT:?}/waft" "${BENCH_ROOT:?}/etcd"
        "start_$system"
        wait_ready "$system"
        say "round $round/$ROUNDS, $w on $system: ${BENCH_SECS}s after ${WARMUP_SECS}s warmup (load average $(cut -d' ' -f1 /proc/loadavg))"
        cut -d' ' -f1 /proc/loadavg >"$LOGS.load"
        # shellcheck disable=SC2046 # workload_args is a list of words on purpose
        run_child - "$LOGS.progress" \
            "$BENCH_BIN" --target "$(target_of "$system")" --endpoints "$(endpoints "$system")" --group "$WAFT_GROUP" \
            $(workload_args "$w") --value-bytes "$VALUE_BYTES" --keys "$KEYS" \
            --duration-secs "$BENCH_SECS" --warmup-secs "$WARMUP_SECS" \
            --label "$w" --json-out "$LOGS.json" --server-pids "$(IFS=,; echo "${PIDS[*]}")" $(client_tls "$system") ||
            say "$w on $system failed; see $LOGS.progress"
        stop_all
    done
done
done

# --- the table ----------------------------------------------------------------

# median of the numbers on stdin, one a line
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# row workload system -> "ops p50_ms p99_ms srv_us cli_us errors load runs"
# (medians over the rounds; srv_us, cli_us: CPU microseconds per operation
# of the three servers together and of the client, - when unread; errors
# summed; runs: each round's ops/s) or nothing
row() {
    local f fs=() ops p50 p99 srv cli errors load runs
    for f in "$BENCH_ROOT/results/$1-$2".r*.json; do [ -f "$f" ] && fs+=("$f"); done
    [ "${#fs[@]}" -gt 0 ] || return 1
    ops=$(jq -r .ops_per_sec "${fs[@]}" | median)
    p50=$(jq -r '.latency_us.all.p50_us / 1000' "${fs[@]}" | median)
    p99=$(jq -r '.latency_us.all.p99_us / 1000' "${fs[@]}" | median)
    srv=$(jq -r '.server_cpu_us_per_op // empty' "${fs[@]}" | median || echo -)
    cli=$(jq -r '.client_cpu_us_per_op // empty' "${fs[@]}" | median || echo -)
    errors=$(jq -r .errors "${fs[@]}" | awk '{ s += $1 } END { print s + 0 }')
    load=$(cat "${fs[@]/%.json/.load}" 2>/dev/null | median || echo -)
    runs=$(jq -r '.ops_per_sec | floor' "${fs[@]}" | paste -sd/ -)
    echo "$ops $p50 $p99 $srv $cli $errors $load $runs"
}

# one decimal, or - for a figure that was not read
fmt1() { if [ "$1" = - ]; then echo -; else awk -v v="$1" 'BEGIN { printf "%.1f", v }'; fi; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'; }

{
    printf '%-9s %-11s %10s %9s %9s %10s %10s %7s %8s %11s %6s  %s\n' workload system ops/s "p50 ms" "p99 ms" "srv us/op" "cli us/op" errors "x etcd" "wasm/native" load "runs ops/s"
    for w in $WORKLOADS; do
        etcd_ops="" native_ops=""
        r=$(row "$w" etcd || true)
        [ -n "$r" ] && etcd_ops=${r%% *}
        r=$(row "$w" waft-native || true)
        [ -n "$r" ] && native_ops=${r%% *}
        for system in $SYSTEMS; do
            r=$(row "$w" "$system" || true)
            if [ -z "$r" ]; then
                printf '%-9s %-11s %10s\n' "$w" "$system" failed
                continue
            fi
            read -r ops p50 p99 srv cli errors load runs <<<"$r"
            x_etcd="" wasm_native=""
            if [ "$system" != etcd ] && [ -n "$etcd_ops" ]; then x_etcd=$(ratio "$ops" "$etcd_ops"); fi
            if [ "$system" != etcd ] && [ "$system" != waft-native ] && [ -n "$native_ops" ]; then wasm_native=$(ratio "$ops" "$native_ops"); fi
            printf '%-9s %-11s %10.0f %9.2f %9.2f %10s %10s %7d %8s %11s %6s  %s\n' "$w" "$system" "$ops" "$p50" "$p99" "$(fmt1 "$srv")" "$(fmt1 "$cli")" "$errors" "$x_etcd" "$wasm_native" "$load" "$runs"
        done
    done
} | tee "$BENCH_ROOT/results/table.txt"
for system in $SYSTEMS; do
    for f in "$BENCH_ROOT"/results/*-"$system".r*.json; do
        [ -f "$f" ] && say "payload, $(jq -r .payload "$f")"
        break
    done
done
case " $WORKLOADS " in
    *" write-1 "*)
        if [ -x "$FLOOR_BIN" ]; then
            "$FLOOR_BIN" --dir "$BENCH_ROOT" --json-out "$BENCH_ROOT/results/floor.json" | tee "$BENCH_ROOT/results/floor.txt"
            floor=$(jq -r '.floor_ms * 1000 | round / 1000' "$BENCH_ROOT/results/floor.json")
            for system in $SYSTEMS; do
                r=$(row write-1 "$system" || true)
                [ -n "$r" ] || continue
                read -r _ p50 p99 _ <<<"$r"
                say "write-1 on $system: p50 $p50 ms, p99 $p99 ms; p50 over the floor ($floor ms): $(ratio "$p50" "$floor")"
            done
        else
            say "no $FLOOR_BIN, so no floor for write-1: cargo build --release -p waft-bench builds it"
        fi
        ;;
esac
say "medians over $ROUNDS round(s); x etcd: ops/s over etcd's; wasm/native: waft's ops/s over waft-native's"
say "srv us/op: CPU time (user + system) of the three servers together per operation over the measured window; cli us/op: the load generator's"
say "load: the 1-minute load average as each run began (the run before it counts too); well above $(nproc), the cores, means something else was running"
say "results (JSON per run, progress, server logs): $BENCH_ROOT/results"
