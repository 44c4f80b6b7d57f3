#!/usr/bin/env bash
# Forwarding through the gateway with the real daemon in enforce mode, 10,000 blocked domains
# and 10,000 blocked IPs, against bare forwarding and the nftables peer, with
# tests/bench/peer/forwarding.sh. Needs root and a release build (cargo build --release -p tollgate).
# Also measured: a tc hook with a filter that does nothing (clsact and cls_bpf: the floor of the
# legacy tc path), the probes' empty program attached by TCX as the daemon attaches (the floor
# of a TCX program; needs cargo build --release -p tollgate-dataplane --example tcx_noop, the
# row is left out without it), and the programs' own time per packet in place
# (kernel.bpf_stats_enabled during one more UDP run).
#
#   tests/bench/forwarding_enforce.sh            # REPEATS=5 by default
#   REPEATS=3 MODE=monitor tests/bench/forwarding_enforce.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH=${BENCH:-$ROOT/tests/bench/peer/forwarding.sh}
TOLLGATE=${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/tollgate}
[ -x "$TOLLGATE" ] || { echo "no $TOLLGATE: cargo build --release -p tollgate" >&2; exit 1; }
[ -x "$BENCH" ] || { echo "no $BENCH (the peer bench harness)" >&2; exit 1; }
NOOP=${TCX_NOOP_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/tcx_noop}
if [ -x "$NOOP" ]; then
  export TCX_HOOK_CMD="exec $NOOP \$IF_GW_C"
else
  echo "no $NOOP: the TCX floor row is left out (cargo build --release -p tollgate-dataplane --example tcx_noop)" >&2
fi
WORK=$(mktemp -d /tmp/tollgate-fwd.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
python3 "$ROOT/tests/bench/forwarding_config.py" "$WORK" "${MODE:-enforce}" IFACE > "$WORK/tollgate.toml.in"
export SUT_CMD_BG=1 SUT_NAME="tollgate-${MODE:-enforce}" SUT_BPF_PROGS="tg_lan_ingress tg_lan_egress"
export SUT_CMD="sed \"s/IFACE/\$IF_GW_C/\" $WORK/tollgate.toml.in > $WORK/run.toml && exec $TOLLGATE run --config $WORK/run.toml >> $WORK/sut.log 2>&1"
REPEATS=${REPEATS:-5} "$BENCH"
