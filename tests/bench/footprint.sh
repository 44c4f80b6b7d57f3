#!/usr/bin/env bash
# Footprint of the two binaries: their size as packaged (debug info stripped, as
# `cargo xtask package` does) and their resident memory when idle, next to nginx's as a
# reference measured in the same run (a small, well-known C server on the same box).
#
#   tollgate: the daemon in monitor mode on a veth pair in a private network namespace, with
#             the shipped catalog, after IDLE_SECS without traffic;
#   tollgate-hub: on SQLite, no gateway enrolled, after IDLE_SECS.
#
# Root (the daemon loads its kernel programs). Needs the release binaries
# (`cargo build --release -p tollgate -p tollgate-hub`; `cargo xtask bench footprint` does
# it). Cleans up on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
IDLE_SECS=${IDLE_SECS:-10}
BIN=target/release
WORK=$(mktemp -d /tmp/tollgate-footprint.XXXXXX)
NS=tgfp$$
PIDS=()
cleanup() {
  # `stop` detaches the kernel programs and removes their pins (a plain SIGTERM leaves them
  # enforcing, as a restart wants); then the rest.
  if [ -S "$WORK/control.sock" ]; then
    "$BIN/tollgate" stop --control "$WORK/control.sock" >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do [ -S "$WORK/control.sock" ] || break; sleep 0.1; done
  fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
stripped_kib() {
  objcopy --strip-debug "$1" "$WORK/stripped"
  echo $(( $(stat -c %s "$WORK/stripped") / 1024 ))
}

for b in tollgate tollgate-hub; do
  [ -x "$BIN/$b" ] || { echo "no $BIN/$b: cargo build --release -p $b" >&2; exit 1; }
done

# The reference: nginx, one worker, idle.
NGINX_KIB=none
if command -v nginx >/dev/null; then
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 64; }
http { access_log off; server { listen 127.0.0.1:18099; return 204; } }
EOF
  nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -g 'daemon off;' &
  PIDS+=($!)
fi

# The hub on SQLite.
cat > "$WORK/hub.toml" <<EOF
listen = "127.0.0.1:18443"
state_dir = "$WORK/hub-state"
database = "sqlite://$WORK/hub.db"
server_names = ["127.0.0.1"]
EOF
"$BIN/tollgate-hub" --config "$WORK/hub.toml" run > "$WORK/hub.out" 2> "$WORK/hub.log" &
HUB=$!
PIDS+=($HUB)

# The gateway daemon on a veth pair in its own namespace.
ip netns add "$NS"
ip -n "$NS" link add tgfp0 type veth peer name tgfp1
ip -n "$NS" link set lo up
ip -n "$NS" link set tgfp0 up
ip -n "$NS" link set tgfp1 up
cat > "$WORK/tollgate.toml" <<EOF
mode = "monitor"
state_dir = "$WORK/gw-state"
control_socket = "$WORK/control.sock"
status_interval_secs = 0

[[interfaces]]
name = "tgfp0"
role = "lan"
EOF
"$BIN/tollgate" run --config "$WORK/tollgate.toml" --netns "$NS" > "$WORK/gw.log" 2>&1 &
GW=$!
PIDS+=($GW)
for _ in $(seq 1 100); do [ -S "$WORK/control.sock" ] && break; sleep 0.2; done
[ -S "$WORK/control.sock" ] || { echo "the daemon did not start:"; cat "$WORK/gw.log"; exit 1; }
sleep "$IDLE_SECS"

GW_KIB=$(rss_kib "$GW")
HUB_KIB=$(rss_kib "$HUB")
if [ "${#PIDS[@]}" -gt 2 ]; then
  NGINX_KIB=0
  # nginx: master and its worker.
  for p in $(pgrep -f "nginx.*$WORK/nginx"); do NGINX_KIB=$(( NGINX_KIB + $(rss_kib "$p") )); done
fi
NGINX_BIN_KIB=$( command -v nginx >/dev/null && echo $(( $(stat -c %s "$(command -v nginx)") / 1024 )) || echo none )

printf '%-26s %10s %14s\n' "" "size KiB" "idle RSS KiB"
printf '%-26s %10s %14s\n' "tollgate (daemon)" "$(stripped_kib "$BIN/tollgate")" "$GW_KIB"
printf '%-26s %10s %14s\n' "tollgate-hub (SQLite)" "$(stripped_kib "$BIN/tollgate-hub")" "$HUB_KIB"
printf '%-26s %10s %14s\n' "nginx (reference)" "$NGINX_BIN_KIB" "$NGINX_KIB"
if [ "$NGINX_KIB" != none ] && [ "$NGINX_KIB" -gt 0 ]; then
  awk -v g="$GW_KIB" -v h="$HUB_KIB" -v n="$NGINX_KIB" \
    'BEGIN { printf "idle RSS vs nginx: tollgate %.1fx, tollgate-hub %.1fx\n", g/n, h/n }'
fi
