#!/usr/bin/env bash
# Rebuild the fuzz seed corpus from nDPI's captures (needs tshark). Each seed is one
# payload: a TCP segment starting a ClientHello, a client QUIC/gQUIC datagram, a DNS
# message, an HTTP request head. At most $MAX per target, distinct by content.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
corpus=${TOLLGATE_CORPUS:-$here/../../../../shared/corpus}/ndpi/pcap
MAX=${MAX:-48}
dump() { # target display-filter field
  local out=$here/corpus/$1; mkdir -p "$out"
  for p in "$corpus"/*; do
    tshark -r "$p" -Y "$2" -T fields -e "$3" 2>/dev/null || true
  done | awk 'length($0) > 0' | sort -u | awk -v m="$MAX" 'NR % 1 == 0 && n < m { print; n++ }' |
  while read -r hex; do
    f=$out/$(printf %s "$hex" | sha1sum | cut -c1-16)
    printf %s "$hex" | xxd -r -p > "$f"
  done
}
dump tls_stream 'tls.handshake.type == 1 && tcp.len > 0' tcp.payload
dump quic_initial '(quic.long.packet_type == 0 && udp.length > 1200) || gquic.tag == "CHLO"' udp.payload
dump dns 'dns && udp' udp.payload
dump http_head 'http.request' tcp.payload
du -sh "$here"/corpus/*
