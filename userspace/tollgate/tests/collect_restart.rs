//! `tollgate collect` killed with SIGKILL again and again while a log is written and
//! rotated: afterwards every line is counted exactly once (none lost, none doubled), in the
//! report and in the journal. The real binary, a real directory, real renames.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LINES: u64 = 12_000;
const ROTATE_EVERY: u64 = 2000;

fn line(i: u64) -> String {
    // The bytes field carries the line's number, so the journal shows which lines counted.
    format!(
        "1157689312.{:03} 5 10.0.{}.{} TCP_MISS/200 {} CONNECT host{}.example.com:443 - DIRECT/1.2.3.4 -\n",
        i % 1000,
        (i / 250) % 250,
        i % 250,
        i + 1,
        i % 37
    )
}

fn start(bin: &Path, cfg: &Path) -> Child {
    Command::new(bin)
        .args(["collect", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tollgate collect")
}

fn report_records(out: &Path) -> Option<(u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("discovery.json")).ok()?).ok()?;
    let inputs = v["inputs"].as_array()?;
    let lines = inputs.iter().filter_map(|i| i["lines"].as_u64()).sum();
    let recs = inputs.iter().filter_map(|i| i["records"].as_u64()).sum();
    Some((lines, recs))
}

#[test]
fn sigkill_while_writing_and_rotating_counts_every_line_once() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tollgate"));
    let tmp = tempfile::tempdir().unwrap();
    let (watch, state, out) = (
        tmp.path().join("logs"),
        tmp.path().join("state"),
        tmp.path().join("out"),
    );
    std::fs::create_dir_all(&watch).unwrap();
    let cfg = tmp.path().join("collect.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[collect]\nstate_dir = {:?}\noutput_dir = {:?}\n\
             report_interval_secs = 1\npoll_interval_ms = 20\n\
             [[collect.watch]]\ndir = {:?}\npattern = \"app.log*\"\n",
            tmp.path(),
            state,
            out,
            watch
        ),
    )
    .unwrap();

    // The writer: appends in small bursts and rotates (rename + new file) every 1000 lines.
    let w = watch.clone();
    let writer = std::thread::spawn(move || {
        let live = w.join("app.log");
        let mut f = std::fs::File::create(&live).unwrap();
        for i in 0..LINES {
            if i > 0 && i % ROTATE_EVERY == 0 {
                std::fs::rename(&live, w.join(format!("app.log.{}", i / ROTATE_EVERY))).unwrap();
                f = std::fs::File::create(&live).unwrap();
            }
            f.write_all(line(i).as_bytes()).unwrap();
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });

    // Kill it over and over while the writer runs.
    let mut kills = 0;
    // Kills that hit a collector while it was reading (its journal grew during the run).
    let mut kills_mid_work = 0;
    let journal_len = || {
        std::fs::metadata(state.join("records.jsonl"))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let mut seed = 0x9e37_79b9_u64;
    while !writer.is_finished() || kills < 6 {
        let before = journal_len();
        let mut c = start(&bin, &cfg);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(200 + seed % 600));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        kills += 1;
        if journal_len() > before {
            kills_mid_work += 1;
        }
        assert!(kills < 200, "the writer never finished");
    }
    assert!(
        kills_mid_work >= 3,
        "only {kills_mid_work} of {kills} kills hit a working collector"
    );
    writer.join().unwrap();

    // A last run reads the rest, then stops cleanly.
    let mut c = start(&bin, &cfg);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if report_records(&out).is_some_and(|(_, r)| r >= LINES) {
            // One more report interval: a doubled line would show up now.
            std::thread::sleep(Duration::from_millis(1500));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "collector did not catch up: {:?}",
            report_records(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(c.wait().unwrap().success());

    let (lines, records) = report_records(&out).unwrap();
    assert_eq!((lines, records), (LINES, LINES), "after {kills} kills");
    let journal = tollgate_logs::collect::collector::read_journal(&state).unwrap();
    let mut seen = vec![0u32; LINES as usize];
    for (_, r) in &journal {
        let i = (r.bytes_up + r.bytes_down - 1) as usize;
        seen[i] += 1;
    }
    let lost: Vec<usize> = (0..seen.len()).filter(|i| seen[*i] == 0).collect();
    let doubled: Vec<usize> = (0..seen.len()).filter(|i| seen[*i] > 1).collect();
    assert!(
        lost.is_empty() && doubled.is_empty(),
        "after {kills} kills: lost {lost:?}, doubled {doubled:?}"
    );
    assert_eq!(journal.len() as u64, LINES);
    eprintln!(
        "{kills} SIGKILLs ({kills_mid_work} mid-work), {LINES} lines over 6 files, each counted once"
    );
}

#[test]
fn corrupt_offsets_file_stops_the_start_and_is_kept() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tollgate"));
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("state.json"), b"{\"version\":1,\"journ").unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[collect]\nstate_dir = {:?}\n[[collect.watch]]\ndir = {:?}\n",
            tmp.path(),
            state,
            tmp.path()
        ),
    )
    .unwrap();
    let o = Command::new(&bin)
        .args(["collect", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("state.json") && err.contains("unreadable"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(state.join("state.json")).unwrap(),
        b"{\"version\":1,\"journ"
    );
}

#[test]
fn udp_without_allow_list_is_a_config_error() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tollgate"));
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[collect]\n[collect.udp]\nlisten = \"127.0.0.1:0\"\n",
            tmp.path()
        ),
    )
    .unwrap();
    let o = Command::new(&bin)
        .args(["collect", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(err.contains("udp.allow"), "{err}");
}
