#!/usr/bin/env bash
# Two (or more) tollgate builds against each other on UDP 64-byte forwarding, for a change to
# the kernel programs whose effect is smaller than the full bench's run-to-run noise.
#
# Each round runs every build once, in turn, in the same topology as forwarding_enforce.sh
# (enforce mode, 10,000 blocked domains and 10,000 blocked IPs): the daemon is started, one
# UDP run measures packets/s at the server while kernel.bpf_stats_enabled=1 measures the
# programs' own time per packet in place (run_time_ns / run_cnt of tg_lan_ingress; the
# statistics' two clock reads, ~34 ns on a 2-vCPU KVM guest, are included), and the daemon is
# stopped. A change to the programs shows in the second figure first: it is a per-packet time,
# not a rate of the whole machine.
#
#   cargo build --release -p tollgate && cp target/release/tollgate /tmp/tollgate-a
#   ... change, build again, cp target/release/tollgate /tmp/tollgate-b
#   ROUNDS=4 tests/bench/forwarding_ab.sh /tmp/tollgate-a /tmp/tollgate-b
#
# Needs root, iperf3, bpftool (installed when missing).
set -euo pipefail
PEER=$(cd "$(dirname "${BASH_SOURCE[0]}")/peer" && pwd)
. "$PEER/lib.sh"
bench_need_root
bench_install_traps
[ $# -ge 1 ] || bench_die "usage: $0 TOLLGATE_BIN [TOLLGATE_BIN...]"
for b in "$@"; do [ -x "$b" ] || bench_die "not an executable: $b"; done
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-5}
PORT=5202
bench_ensure iperf3:iperf3 python3:python3 ip:iproute2 bpftool:bpftool

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-fwd-ab.XXXXXX")
bench_on_exit "rm -rf '$WORK'"
bench_lock
bench_on_exit "'$PEER/topo.sh' down"
"$PEER/topo.sh" up
eval "$("$PEER/topo.sh" env)"

python3 "$PEER/../forwarding_config.py" "$WORK" enforce "$IF_GW_C" > "$WORK/run.toml"

bench_bg iperf3s "$WORK/iperf3s.log" ip netns exec "$NS_SERVER" taskset -c 1 iperf3 -s -p $PORT
bench_wait_port "$NS_SERVER" $PORT 10 || bench_die "iperf3 server did not start"

prog_ns() { # "total_ns runs" of tg_lan_ingress
  bpftool prog show -j | python3 -c '
import json, sys
t = c = 0
for p in json.load(sys.stdin):
    if p.get("name") == "tg_lan_ingress":
        t += p.get("run_time_ns", 0); c += p.get("run_cnt", 0)
print(t, c)'
}
udp_kpps() {
  ip netns exec "$NS_CLIENT" taskset -c 0 timeout $((DURATION + 20)) \
    iperf3 -c "$SERVER_IP4" -p $PORT -u -l 64 -b 0 -t "$DURATION" -J >"$WORK/udp.json" 2>&1 || true
  python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["end"]["sum_received"]
print("%.1f" % ((e["packets"] - e["lost_packets"]) / e["seconds"] / 1e3))' "$WORK/udp.json" 2>/dev/null || echo err
}
# One run of one build: "kpps ns_per_packet".
measure() {
  local bin=$1 a b kpps stats
  bench_bg sut "$WORK/sut.log" ip netns exec "$NS_GW" "$bin" run --config "$WORK/run.toml"
  # Attached once the pinned verdicts are reconciled (the last step before the daemon is ready).
  for _ in $(seq 100); do grep -q "reconciled" "$WORK/sut.log" && break; sleep 0.2; done
  grep -q "reconciled" "$WORK/sut.log" || { tail -5 "$WORK/sut.log" >&2; bench_die "$bin did not start"; }
  stats=$(sysctl -n kernel.bpf_stats_enabled)
  sysctl -qw kernel.bpf_stats_enabled=1
  a=$(prog_ns); kpps=$(udp_kpps); b=$(prog_ns)
  sysctl -qw kernel.bpf_stats_enabled="$stats"
  bench_stop sut
  ip netns exec "$NS_GW" "$bin" stop >/dev/null 2>&1 || true
  echo "$kpps $(echo "$a $b" | awk '{ if ($4 > $2) printf "%.1f", ($3 - $1) / ($4 - $2); else print "n/a" }')"
}

declare -A KPPS NS
ip netns exec "$NS_CLIENT" taskset -c 0 timeout 20 iperf3 -c "$SERVER_IP4" -p $PORT -u -l 64 -b 0 -t 2 >/dev/null 2>&1 || true
for ((r = 1; r <= ROUNDS; r++)); do
  line="round $r:"
  for i in $(seq 0 $(($# - 1))); do
    bin=${@:$((i + 1)):1}
    read -r k n <<<"$(measure "$bin")"
    KPPS[$i]="${KPPS[$i]:-} $k"; NS[$i]="${NS[$i]:-} $n"
    line="$line  [$i] $k kpps, $n ns"
  done
  bench_log "$line"
done

echo
echo "## forwarding_ab.sh: UDP 64 B through the gateway, enforce mode, $ROUNDS rounds of ${DURATION}s, builds alternated"
bench_machine_note
printf '%-4s %-40s %10s %14s  %s\n' "" build "kpps" "ns/packet" "runs (kpps / ns)"
for i in $(seq 0 $(($# - 1))); do
  # shellcheck disable=SC2086  # lists of numbers
  printf '%-4s %-40s %10s %14s  %s / %s\n' "[$i]" "${@:$((i + 1)):1}" "$(bench_median ${KPPS[$i]})" \
    "$(bench_median ${NS[$i]})" "$(echo ${KPPS[$i]} | tr ' ' ',')" "$(echo ${NS[$i]} | tr ' ' ',')"
done
echo "# ns/packet: tg_lan_ingress's own time in place (kernel.bpf_stats_enabled), its clock reads included"
