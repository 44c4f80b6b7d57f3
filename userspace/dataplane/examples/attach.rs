//! Attaches the probes and keeps them attached until SIGINT/SIGTERM, draining events and
//! printing a status line every few seconds; detaches on exit. For manual tests and as the
//! system under test of tests/bench/peer/forwarding.sh (run as root):
//!
//! `attach IFACE:lan|wan [IFACE:lan|wan ...] [--pin DIR] [--enforce]`
//!
//! e.g. `SUT_CMD_BG=1 SUT_CMD='exec target/release/examples/attach $IF_GW_C:lan $IF_GW_S:wan'
//! tests/bench/peer/forwarding.sh`

use std::{path::PathBuf, time::Duration};

use tollgate_dataplane::{AttachRequest, Dataplane, DataplaneOptions, Mode, Role};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut interfaces = Vec::new();
    let mut pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/tollgate/attach-{}",
        std::process::id()
    ));
    let mut mode = Mode::Monitor;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pin" => pin_dir = PathBuf::from(args.next().ok_or("--pin needs a directory")?),
            "--enforce" => mode = Mode::Enforce,
            spec => {
                let (name, role) = spec.split_once(':').ok_or("expected IFACE:lan|wan")?;
                let role = match role {
                    "lan" => Role::Lan,
                    "wan" => Role::Wan,
                    _ => return Err(format!("bad role in {spec}").into()),
                };
                interfaces.push((name.to_owned(), role));
            }
        }
    }
    if interfaces.is_empty() {
        return Err("usage: attach IFACE:lan|wan [...] [--pin DIR] [--enforce]".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut dp = Dataplane::start(DataplaneOptions {
            interfaces,
            pin_dir,
            mode,
            attach: AttachRequest::from_env_or(AttachRequest::Auto)?,
        })?;
        for a in dp.attached() {
            println!(
                "attached {} {} on {} {} ({:?}, prog {}, link {}{})",
                a.mode,
                a.program,
                a.interface,
                a.hook,
                a.direction,
                a.program_id,
                a.link_id,
                if a.adopted { ", adopted" } else { "" }
            );
        }
        let mut reader = dp.take_event_reader()?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut events = 0u64;
        loop {
            tokio::select! {
                ev = reader.next() => { ev?; events += 1; }
                _ = tick.tick() => {
                    let s = dp.stats()?;
                    println!(
                        "flows {} events {} packets {} ringbuf_full {} parse_errors {}",
                        dp.flow_counters()?.len(), events, s.packets, s.ringbuf_full, s.parse_errors()
                    );
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        dp.detach()?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
