//! Holds the probes' empty program (`tg_noop`) at one interface's ingress, attached the way the
//! daemon attaches its programs (TCX where the kernel has it), until SIGTERM or SIGINT. It is
//! the floor of a TCX program in `tests/bench/forwarding_enforce.sh`: the peer harness's own
//! `hook` row is a cBPF filter under a clsact qdisc (cls_bpf), a different and heavier path.
//! Run as root:
//!
//! `tcx_noop IFACE`

use tollgate_dataplane::{abi, testing::ProbeHarness};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iface = std::env::args().nth(1).ok_or("usage: tcx_noop IFACE")?;
    let mut harness = ProbeHarness::load()?;
    harness.attach_ingress(abi::PROG_NOOP, &iface)?;
    println!("attached {} at {iface} ingress", abi::PROG_NOOP);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok::<(), std::io::Error>(())
    })?;
    // Dropping the harness detaches the program.
    drop(harness);
    Ok(())
}
