#!/bin/bash
# Event-storm benchmark against a real daemon: runs the release `tollgate` in
# monitor mode in a network namespace of its own, injects N distinct flows (a real Chrome
# ClientHello each) at RATE frames/s into the daemon's pinned LAN-ingress program with
# `event_storm` (BPF_PROG_TEST_RUN), then prints what the daemon kept against what the
# probes emitted, every loss counted, and the daemon's memory against the issue's targets:
#
#   events received / events emitted, ring drops (must be 0), daemon VmRSS with the flows
#   tracked (target <= 64 MiB with 100k flows), and the RSS split (anon / file / shmem,
#   the ring buffer's mapping).
#
# Needs root and a release build:
#   cargo build --release -p tollgate
#   cargo build --release -p tollgate-dataplane --example event_storm
# Usage (env): N=flows (200000) RATE=frames/s (100000; 0 = as fast as possible)
#   THREADS=injector threads (2) KIND=tls|dns NS=namespace (tgr-storm) BIN=target dir/release
#   userspace/dataplane/examples/storm.sh
set -u
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
N=${N:-200000}
RATE=${RATE:-100000}
THREADS=${THREADS:-2}
KIND=${KIND:-tls}
NS=${NS:-tgr-storm}
D=$(mktemp -d /tmp/tollgate-storm.XXXXXX)
PIN=/sys/fs/bpf/tollgate/$NS
TARGET_RSS_KIB=$((64 * 1024))

for b in "$BIN/tollgate" "$BIN/examples/event_storm"; do
  [ -x "$b" ] || { echo "missing $b (build it first, see the header)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 1; }

cat > "$D/tollgate.toml" <<EOF
mode = "monitor"
state_dir = "$D/state"
control_socket = "$D/control.sock"
status_interval_secs = 0

[[interfaces]]
name = "st0"
role = "lan"

[flows]
max_flows = 262144
EOF

cleanup() {
  [ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  "$BIN/tollgate" stop --config "$D/tollgate.toml" --netns "$NS" >/dev/null 2>&1
  rm -rf "$PIN"
  ip netns del "$NS" 2>/dev/null
}
trap cleanup EXIT

ip netns del "$NS" 2>/dev/null
rm -rf "$PIN"
ip netns add "$NS"
ip link add st0 netns "$NS" type veth peer name st1 netns "$NS"
ip -n "$NS" link set st0 up
ip -n "$NS" link set st1 up

"$BIN/tollgate" run --config "$D/tollgate.toml" --netns "$NS" >"$D/daemon.log" 2>&1 &
PID=$!
for _ in $(seq 100); do [ -S "$D/control.sock" ] && break; sleep 0.1; done
[ -S "$D/control.sock" ] || { echo "daemon did not start:"; cat "$D/daemon.log"; exit 1; }
sleep 0.5

status() { "$BIN/tollgate" status --json --control "$D/control.sock"; }
field() { jq -r ".$1 // .data.$1 // 0"; }
rss_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PID/status"; }

idle_rss=$(rss_kib VmRSS)
before=$(status)
ev0=$(echo "$before" | field events)
kev0=$(echo "$before" | field kernel_events)
drop0=$(echo "$before" | field ring_drops)
echo "daemon pid $PID, idle VmRSS $((idle_rss / 1024)) MiB"

"$BIN/examples/event_storm" "$PIN" --flows "$N" --threads "$THREADS" --kind "$KIND" --rate "$RATE"

# Let the daemon drain and poll the counters (each status request polls them).
last=-1
for _ in $(seq 60); do
  sleep 1
  s=$(status)
  ev=$(echo "$s" | field events)
  [ "$ev" = "$last" ] && break
  last=$ev
done
s=$(status)
ev=$(( $(echo "$s" | field events) - ev0 ))
kev=$(( $(echo "$s" | field kernel_events) - kev0 ))
drops=$(( $(echo "$s" | field ring_drops) - drop0 ))
flows=$(echo "$s" | field flows)
decode=$(echo "$s" | field event_decode_errors)
mapfull=$(echo "$s" | field flow_map_full)
tabledrop=$(echo "$s" | field flows_dropped)
rss=$(rss_kib VmRSS)
hwm=$(rss_kib VmHWM)
echo "--- storm: N=$N RATE=$RATE/s THREADS=$THREADS KIND=$KIND"
echo "events: received $ev / emitted by the probes $kev = $(echo "scale=4; $ev / ($kev + ($kev == 0))" | bc)"
echo "losses: ring drops $drops ($(echo "scale=4; $drops / ($N + ($N == 0))" | bc) of the flows), decode errors $decode, kernel flow map full $mapfull, flows refused by the full flow table $tabledrop"
echo "flows tracked by the daemon: $flows"
echo "daemon VmRSS $rss KiB = $(echo "scale=1; $rss / 1024" | bc) MiB = $(echo "scale=3; $rss / $TARGET_RSS_KIB" | bc) x the 64 MiB target (peak VmHWM $(echo "scale=1; $hwm / 1024" | bc) MiB)"
awk '/^Rss(Anon|File|Shmem):/ { printf "  %s %.1f MiB\n", $1, $2 / 1024 }' "/proc/$PID/status"
# The ring buffer is an anon-inode mapping named after bpf maps.
awk '/^[0-9a-f]+-[0-9a-f]+ / { name = $6 " " $7 } /^Rss:/ { rss[name] += $2 }
     END { for (n in rss) if (rss[n] >= 1024) printf "  mapping %-40s %.1f MiB\n", n, rss[n] / 1024 }' \
  "/proc/$PID/smaps" | sort -k3 -n -r | head -8
echo "daemon log: $D/daemon.log"

# What answering `tollgate flows --json` for every tracked flow costs the daemon.
t0=$(date +%s.%N)
bytes=$("$BIN/tollgate" flows --json --control "$D/control.sock" | wc -c)
t1=$(date +%s.%N)
echo "flows --json: $bytes bytes in $(echo "$t1 - $t0" | bc) s; daemon VmRSS after $(( $(rss_kib VmRSS) / 1024 )) MiB, peak VmHWM $(( $(rss_kib VmHWM) / 1024 )) MiB"
t0=$(date +%s.%N)
bytes=$("$BIN/tollgate" apps --json --control "$D/control.sock" | wc -c)
t1=$(date +%s.%N)
echo "apps --json: $bytes bytes in $(echo "$t1 - $t0" | bc) s; daemon VmRSS after $(( $(rss_kib VmRSS) / 1024 )) MiB, peak VmHWM $(( $(rss_kib VmHWM) / 1024 )) MiB"
