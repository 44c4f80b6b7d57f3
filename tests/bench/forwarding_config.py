#!/usr/bin/env python3
"""The daemon config of the forwarding benches: MODE on one LAN interface, 10,000 blocked
domains and 10,000 blocked IPs (one custom app tagged unsanctioned).

    forwarding_config.py WORK MODE IFACE > tollgate.toml

WORK holds the state directory and the control socket.
"""
import sys

work, mode, iface = sys.argv[1:4]
domains = ", ".join(f'"blocked{i}.example-{i % 97}.net"' for i in range(10_000))
ips = ", ".join(f'"100.64.{i // 256}.{i % 256}/32"' for i in range(10_000))
sys.stdout.write(f"""mode = "{mode}"
state_dir = "{work}/state"
control_socket = "{work}/control.sock"
status_interval_secs = 0

[[interfaces]]
name = "{iface}"
role = "lan"

[[custom_apps]]
id = "bench-blocked"
name = "Bench blocked"
category = "Cloud storage"
domains = [{domains}]
ip_ranges = [{ips}]

[apps.bench-blocked]
tag = "unsanctioned"
""")
