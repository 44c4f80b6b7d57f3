//! The lifecycle of the attached probes: mounting bpffs, loading the embedded object with
//! maps pinned by an earlier run of the same ABI, filling the program array, attaching (or
//! adopting pinned links), and detaching with every pin removed.

use std::{collections::HashSet, fs, io, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use tollgate_common::{self as abi, Config, IfaceInfo};

use crate::{
    AttachInfo, Dataplane, DataplaneOptions, Hook, Mode, Role,
    error::{DataplaneError, map_err, map_mut},
    event::Direction,
};

/// The probes object, built by build.rs.
pub(crate) static PROBES: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-probes"));

/// Maps pinned under `abi<N>/maps` (the per-CPU scratch map is private to each load).
const PINNED_MAPS: [&str; 14] = [
    abi::MAP_FLOWS,
    abi::MAP_HELLO,
    abi::MAP_EVENTS,
    abi::MAP_FLOW_VERDICTS,
    abi::MAP_NAME_VERDICTS,
    abi::MAP_BLOCK_V4,
    abi::MAP_BLOCK_V6,
    abi::MAP_CONFIG,
    abi::MAP_STATS,
    abi::MAP_IFACES,
    // Steered destinations outlive a daemon restart like blocked ones (the listener sockmap
    // does not: its socket is the old proxy's).
    abi::MAP_STEER_V4,
    abi::MAP_STEER_V6,
    abi::MAP_STEER_CLIENT,
    // Pinned so that its entries survive the daemon (the kernel empties a program array when
    // its last user reference goes away).
    abi::MAP_PROGS,
];

pub(crate) const BPFFS_ROOT: &str = "/sys/fs/bpf";

fn program_for(role: Role, hook: Hook) -> (&'static str, Direction) {
    match (role, hook) {
        (Role::Lan, Hook::Ingress) => (abi::PROG_LAN_INGRESS, Direction::Up),
        (Role::Lan, Hook::Egress) => (abi::PROG_LAN_EGRESS, Direction::Down),
        (Role::Wan, Hook::Ingress) => (abi::PROG_WAN_INGRESS, Direction::Down),
        (Role::Wan, Hook::Egress) => (abi::PROG_WAN_EGRESS, Direction::Up),
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it is already there.
pub fn ensure_bpffs() -> Result<(), DataplaneError> {
    let path = Path::new(BPFFS_ROOT);
    let err = |source| DataplaneError::Bpffs {
        path: path.to_path_buf(),
        source,
    };
    match nix::sys::statfs::statfs(path) {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC => return Ok(()),
        Ok(_) => {}
        Err(e) => return Err(err(io::Error::from(e))),
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| err(io::Error::from(e)))
}

fn mkdir(path: &Path) -> Result<(), DataplaneError> {
    fs::create_dir_all(path).map_err(|source| DataplaneError::PinDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the config entry the probes read.
pub(crate) fn write_config(ebpf: &mut Ebpf, mode: Mode) -> Result<(), DataplaneError> {
    let mut cfg: Array<&mut MapData, Config> =
        Array::try_from(map_mut(ebpf, abi::MAP_CONFIG)?).map_err(map_err(abi::MAP_CONFIG))?;
    let mut c = cfg.get(&0, 0).map_err(map_err(abi::MAP_CONFIG))?;
    c.mode = mode.abi();
    cfg.set(0, c, 0).map_err(map_err(abi::MAP_CONFIG))
}

/// See [`Dataplane::start`].
pub(crate) fn start(opts: DataplaneOptions) -> Result<Dataplane, DataplaneError> {
    if opts.pin_dir.starts_with(BPFFS_ROOT) {
        ensure_bpffs()?;
    }
    let root = opts.pin_dir.join(format!("abi{}", abi::ABI_VERSION));
    let (maps_dir, progs_dir, links_dir) =
        (root.join("maps"), root.join("progs"), root.join("links"));
    for d in [&maps_dir, &progs_dir, &links_dir] {
        mkdir(d)?;
    }
    remove_other_abis(&opts.pin_dir, &root);
    drop_resized_ring(&maps_dir);

    let mut loader = EbpfLoader::new();
    for name in PINNED_MAPS {
        loader.map_pin_path(name, maps_dir.join(name));
    }
    let mut ebpf = loader.load(PROBES)?;
    write_config(&mut ebpf, opts.mode)?;

    // Interfaces, resolved once.
    let mut ifaces = Vec::new();
    for (name, role) in &opts.interfaces {
        let ifindex = nix::net::if_::if_nametoindex(name.as_str()).map_err(|source| {
            DataplaneError::Interface {
                name: name.clone(),
                source,
            }
        })?;
        ifaces.push((name.clone(), ifindex, *role));
    }
    {
        let mut m: BpfHashMap<&mut MapData, u32, IfaceInfo> =
            BpfHashMap::try_from(map_mut(&mut ebpf, abi::MAP_IFACES)?)
                .map_err(map_err(abi::MAP_IFACES))?;
        let keep: HashSet<u32> = ifaces.iter().map(|(_, i, _)| *i).collect();
        let stale: Vec<u32> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep.contains(k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
        for (_, ifindex, role) in &ifaces {
            let info = IfaceInfo {
                role: role.abi(),
                _pad: 0,
            };
            m.insert(*ifindex, info, 0)
                .map_err(map_err(abi::MAP_IFACES))?;
        }
    }

    // Load each needed program once, pin it.
    let mut needed: Vec<&'static str> = abi::TAIL_CALLS.iter().map(|(_, n)| *n).collect();
    for (_, _, role) in &ifaces {
        for hook in [Hook::Ingress, Hook::Egress] {
            let (p, _) = program_for(*role, hook);
            if !needed.contains(&p) {
                needed.push(p);
            }
        }
    }
    for name in &needed {
        let prog = classifier(&mut ebpf, name)?;
        prog.load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let pin = progs_dir.join(name);
        let _ = fs::remove_file(&pin);
        prog.pin(&pin).map_err(|source| DataplaneError::Pin {
            path: pin.clone(),
            source,
        })?;
    }

    install_tail_calls(&mut ebpf)?;

    let mut attached = Vec::new();
    let mut links = Vec::new();
    let mut link_pins = Vec::new();
    for (iface, ifindex, role) in &ifaces {
        for hook in [Hook::Ingress, Hook::Egress] {
            let (pname, direction) = program_for(*role, hook);
            let pin = links_dir.join(format!("{iface}-{role}-{hook}"));
            let (link, adopted) = attach_or_adopt(&mut ebpf, pname, iface, hook, &pin)?;
            let info = link.info().map_err(|source| DataplaneError::Link {
                path: pin.clone(),
                source,
            })?;
            tracing::debug!(%iface, %hook, program = pname, adopted, "attached");
            attached.push(AttachInfo {
                interface: iface.clone(),
                ifindex: *ifindex,
                role: *role,
                hook,
                direction,
                program: pname,
                program_id: info.program_id(),
                link_id: info.id(),
                adopted,
            });
            links.push(link);
            link_pins.push(pin);
        }
    }
    // Links of interfaces or roles no longer configured: unpinning detaches them.
    if let Ok(rd) = fs::read_dir(&links_dir) {
        for e in rd.flatten() {
            let p = e.path();
            if !link_pins.contains(&p) {
                tracing::info!(pin = %p.display(), "detaching stale link");
                let _ = fs::remove_file(&p);
            }
        }
    }
    Ok(Dataplane {
        ebpf,
        root,
        attached,
        link_pins,
        _links: links,
    })
}

/// See [`Dataplane::detach`].
pub(crate) fn detach(dataplane: Dataplane) -> Result<(), DataplaneError> {
    let Dataplane {
        ebpf,
        root,
        link_pins,
        _links,
        ..
    } = dataplane;
    for p in &link_pins {
        match fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DataplaneError::PinDir {
                    path: p.clone(),
                    source,
                });
            }
        }
    }
    drop(_links);
    drop(ebpf);
    match fs::remove_dir_all(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(DataplaneError::PinDir { path: root, source }),
    }
    if let Some(parent) = root.parent() {
        // Only removes the instance directory when nothing else lives there.
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}

/// Puts the SNI pipeline into the program array the packet programs tail-call.
pub(crate) fn install_tail_calls(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let mut fds = Vec::new();
    for (slot, name) in abi::TAIL_CALLS {
        let p = ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        let p: &SchedClassifier = p
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let fd = p
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|source| DataplaneError::Program { name, source })?;
        fds.push((slot, fd));
    }
    let mut progs: aya::maps::ProgramArray<&mut MapData> =
        aya::maps::ProgramArray::try_from(map_mut(ebpf, abi::MAP_PROGS)?)
            .map_err(map_err(abi::MAP_PROGS))?;
    for (slot, fd) in &fds {
        progs.set(*slot, fd, 0).map_err(map_err(abi::MAP_PROGS))?;
    }
    Ok(())
}

pub(crate) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?;
    prog.try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

/// Swaps the program into a pinned link from an earlier run, or attaches and pins a new link.
fn attach_or_adopt(
    ebpf: &mut Ebpf,
    pname: &'static str,
    iface: &str,
    hook: Hook,
    pin: &Path,
) -> Result<(FdLink, bool), DataplaneError> {
    let prog = classifier(ebpf, pname)?;
    let perr = |source| DataplaneError::Program {
        name: pname,
        source,
    };
    if pin.exists() {
        match PinnedLink::from_pin(pin) {
            Ok(old) => {
                let fd: FdLink = old.into();
                match SchedClassifierLink::try_from(fd) {
                    Ok(link) => match prog.attach_to_link(link) {
                        Ok(id) => {
                            let link = prog.take_link(id).map_err(perr)?;
                            let fd =
                                FdLink::try_from(link).map_err(|source| DataplaneError::Link {
                                    path: pin.to_path_buf(),
                                    source,
                                })?;
                            return Ok((fd, true));
                        }
                        Err(e) => {
                            tracing::warn!(pin = %pin.display(), error = %e, "pinned link is stale; attaching anew")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(pin = %pin.display(), error = %e, "pinned object is not a TC link")
                    }
                }
            }
            Err(e) => tracing::warn!(pin = %pin.display(), error = %e, "cannot open pinned link"),
        }
        let _ = fs::remove_file(pin);
    }
    let attach_type = match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    };
    let id = prog.attach(iface, attach_type).map_err(perr)?;
    let link = prog.take_link(id).map_err(perr)?;
    let fd = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
        path: pin.to_path_buf(),
        source,
    })?;
    let pinned = fd.pin(pin).map_err(|source| DataplaneError::Pin {
        path: pin.to_path_buf(),
        source,
    })?;
    Ok((pinned.into(), false))
}

/// Unpins a ring buffer pinned by a build with another ring size. aya adopts a pinned map
/// as it is, but reads a ring buffer with the size this build declares: a consumer of the
/// wrong size would read garbage. The programs being replaced keep their ring until they
/// are swapped out; the new ones get a new ring (the events in flight are lost).
fn drop_resized_ring(maps_dir: &Path) {
    let pin = maps_dir.join(abi::MAP_EVENTS);
    if !pin.exists() {
        return;
    }
    let size = MapData::from_pin(&pin)
        .and_then(|m| m.info())
        .map(|i| i.max_entries());
    match size {
        Ok(n) if n == abi::EVENTS_RING_BYTES => {}
        found => {
            tracing::info!(
                pin = %pin.display(),
                found = ?found.map_err(|e| e.to_string()),
                expected = abi::EVENTS_RING_BYTES,
                "ring buffer pinned with another size; making a new one"
            );
            let _ = fs::remove_file(&pin);
        }
    }
}

/// Removes pin directories of other ABI versions under `pin_dir` (their links detach).
fn remove_other_abis(pin_dir: &Path, keep: &Path) {
    let Ok(rd) = fs::read_dir(pin_dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let is_abi = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("abi"));
        if is_abi && p != keep {
            tracing::info!(dir = %p.display(), "removing pins of another ABI version");
            let _ = fs::remove_dir_all(&p);
        }
    }
}
