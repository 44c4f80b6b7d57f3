//! The lifecycle of the attached probes: checking the kernel and choosing the attach mode,
//! mounting bpffs, loading the embedded object with maps pinned by an earlier run of the
//! same ABI, filling the program array, attaching (TCX: or adopting pinned links; tc: or
//! replacing our own filter in place), and detaching with every pin removed.
//!
//! The tc fallback (kernels before 6.6, or `attach = "tc"`): a cls_bpf filter on the clsact
//! qdisc at a fixed priority and handle ([`TC_PRIORITY`], [`TC_HANDLE`]) per hook. Netlink
//! filters cannot be pinned, so what stands for the pinned link is an empty directory
//! `abi<N>/tc/<iface>/<hook>` under the pin root, and the filter itself, which outlives the
//! process like a pinned link does:
//! - a restart (after a clean exit or a crash) replaces the program of the filter at our
//!   priority and handle in one netlink request (no packet goes unseen, no second filter);
//! - `detach` (`tollgate stop`) deletes the filters and the directories;
//! - an interface no longer configured, a switch to TCX, or a pin root of another ABI:
//!   the filters its directories name are deleted once the new programs are attached.
//!
//! The clsact qdisc is left in place (other tools may hang filters on it).

use std::{collections::HashSet, fs, io, mem::ManuallyDrop, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, Link, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
};
use nix::errno::Errno;
use tollgate_common::{self as abi, Config, IfaceInfo};

use crate::{
    AttachInfo, Dataplane, DataplaneOptions, Hook, Mode, Role,
    error::{DataplaneError, map_err, map_mut},
    event::Direction,
    kernel::{self, AttachMode},
};

/// The tc fallback's filter priority ("tg"): fixed, so that a restarted daemon finds its own
/// filter. Lower runs first; this leaves 1..0x7466 to filters that must run before ours.
pub const TC_PRIORITY: u16 = 0x7467;
/// The tc fallback's filter handle at [`TC_PRIORITY`].
pub const TC_HANDLE: u32 = 0x7467_0001;

/// What keeps an attachment alive while the daemon runs.
pub(crate) enum HeldLink {
    /// A TCX link; it is pinned too, so closing it on exit does not detach it.
    Tcx(#[expect(dead_code, reason = "held to keep the link open, never read")] FdLink),
    /// A tc filter. aya deletes a netlink filter when its link is dropped; the filter must
    /// outlive the process like a pinned link, so the link is only dropped through
    /// [`detach`] (it holds plain numbers: nothing leaks).
    Tc {
        iface: String,
        hook: Hook,
        link: ManuallyDrop<SchedClassifierLink>,
    },
}

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

/// The network namespace named in `ip netns exec NAME`, when this process runs under it. That
/// command gives its child a mount namespace of its own and mounts a new sysfs (with NAME as
/// its source) and a new bpffs in it: pins made there, and the programs attached through
/// them, are gone when the namespace's last process exits. (PID 1's view of /sys/fs/bpf,
/// which would tell any private bpffs, is not readable in every VM or container.)
fn under_ip_netns_exec() -> Option<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let name = sysfs_source(&mountinfo)?;
    Path::new("/run/netns").join(&name).exists().then_some(name)
}

/// The source of the sysfs mounted at /sys last (the one in force) in a mountinfo text, when
/// it is not the usual "sysfs" or "none".
pub(crate) fn sysfs_source(mountinfo: &str) -> Option<String> {
    let source = mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let point = mount.split(' ').nth(4)?;
            let mut fs = fs.split(' ');
            (point == "/sys" && fs.next()? == "sysfs").then(|| fs.next().map(str::to_string))?
        })
        .next_back()?;
    let plain_name =
        !source.is_empty() && !source.contains(['/', '\\']) && source != "." && source != "..";
    (source != "sysfs" && source != "none" && plain_name).then_some(source)
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
    let (release, machine) = kernel::running_kernel();
    let attach_mode = kernel::decide(&release, &machine, opts.attach)?;
    tracing::info!(kernel = %release, %machine, requested = %opts.attach, mode = %attach_mode, "attach mode");
    let mut pins_outlive_exit = true;
    if opts.pin_dir.starts_with(BPFFS_ROOT) {
        ensure_bpffs()?;
        if let Some(name) = under_ip_netns_exec() {
            tracing::warn!(
                "running under `ip netns exec {name}`: the bpffs at {BPFFS_ROOT} is that \
                 command's own, so its pins, and the programs attached through them, end with \
                 this process. `tollgate run --netns {name}` keeps the host's bpffs"
            );
            pins_outlive_exit = false;
        }
    }
    let root = opts.pin_dir.join(format!("abi{}", abi::ABI_VERSION));
    let (maps_dir, progs_dir, links_dir, tc_dir) = (
        root.join("maps"),
        root.join("progs"),
        root.join("links"),
        root.join("tc"),
    );
    for d in [&maps_dir, &progs_dir, &links_dir, &tc_dir] {
        mkdir(d)?;
    }
    let old_abi_tc = remove_other_abis(&opts.pin_dir, &root);
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
    let mut tc_current = HashSet::new();
    if attach_mode == AttachMode::Tc {
        for (iface, _, _) in &ifaces {
            add_clsact(iface)?;
        }
    }
    for (iface, ifindex, role) in &ifaces {
        for hook in [Hook::Ingress, Hook::Egress] {
            let (pname, direction) = program_for(*role, hook);
            let (link, adopted, link_id) = match attach_mode {
                AttachMode::Tcx => {
                    let pin = links_dir.join(format!("{iface}-{role}-{hook}"));
                    let (link, adopted) = attach_or_adopt(&mut ebpf, pname, iface, hook, &pin)?;
                    let info = link.info().map_err(|source| DataplaneError::Link {
                        path: pin.clone(),
                        source,
                    })?;
                    link_pins.push(pin);
                    (HeldLink::Tcx(link), adopted, info.id())
                }
                AttachMode::Tc => {
                    // The mark first: a crash right after the attach leaves a filter that the
                    // next start knows about.
                    mkdir(&tc_dir.join(iface).join(hook.to_string()))?;
                    let (link, adopted) = tc_attach_or_replace(&mut ebpf, pname, iface, hook)?;
                    tc_current.insert((iface.clone(), hook));
                    let held = HeldLink::Tc {
                        iface: iface.clone(),
                        hook,
                        link: ManuallyDrop::new(link),
                    };
                    (held, adopted, 0)
                }
            };
            let program_id = classifier(&mut ebpf, pname)?
                .info()
                .map_err(|source| DataplaneError::Program {
                    name: pname,
                    source,
                })?
                .id();
            tracing::debug!(%iface, %hook, program = pname, mode = %attach_mode, adopted, "attached");
            attached.push(AttachInfo {
                interface: iface.clone(),
                ifindex: *ifindex,
                role: *role,
                hook,
                direction,
                program: pname,
                program_id,
                link_id,
                mode: attach_mode,
                adopted,
            });
            links.push(link);
        }
    }
    // Links of interfaces or roles no longer configured (or of the other attach mode):
    // unpinning detaches them.
    if let Ok(rd) = fs::read_dir(&links_dir) {
        for e in rd.flatten() {
            let p = e.path();
            if !link_pins.contains(&p) {
                tracing::info!(pin = %p.display(), "detaching stale link");
                let _ = fs::remove_file(&p);
            }
        }
    }
    // Filters of interfaces no longer configured, of the other attach mode, or of another
    // ABI's pins (deleted only now: a filter we attach to again was replaced in place).
    for (iface, hook) in read_tc_marks(&tc_dir).into_iter().chain(old_abi_tc) {
        if !tc_current.contains(&(iface.clone(), hook)) {
            tracing::info!(%iface, %hook, "deleting stale tc filter");
            delete_tc_filter(&iface, hook);
            let _ = fs::remove_dir(tc_dir.join(&iface).join(hook.to_string()));
            let _ = fs::remove_dir(tc_dir.join(&iface));
        }
    }
    Ok(Dataplane {
        ebpf,
        root,
        attached,
        attach_mode,
        link_pins,
        links,
        pins_outlive_exit,
    })
}

/// See [`Dataplane::detach`].
pub(crate) fn detach(dataplane: Dataplane) -> Result<(), DataplaneError> {
    let Dataplane {
        ebpf,
        root,
        link_pins,
        links,
        ..
    } = dataplane;
    // tc filters: deleted through their links. One already gone (deleted by hand, or its
    // interface removed) is not an error; any other failure is reported after the rest of
    // the cleanup.
    let mut tc_error = None;
    for held in links {
        let HeldLink::Tc { iface, hook, link } = held else {
            continue;
        };
        match ManuallyDrop::into_inner(link).detach() {
            Ok(()) => {}
            Err(e) if filter_gone(&e) => {}
            Err(source) => {
                tc_error.get_or_insert(DataplaneError::TcFilter {
                    iface,
                    hook,
                    source,
                });
            }
        }
    }
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
    tc_error.map_or(Ok(()), Err)
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

/// Removes pin directories of other ABI versions under `pin_dir` (their links detach) and
/// returns the tc filters they had marked, for the caller to delete once its own programs
/// are attached.
fn remove_other_abis(pin_dir: &Path, keep: &Path) -> Vec<(String, Hook)> {
    let mut tc = Vec::new();
    let Ok(rd) = fs::read_dir(pin_dir) else {
        return tc;
    };
    for e in rd.flatten() {
        let p = e.path();
        let is_abi = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("abi"));
        if is_abi && p != keep {
            tracing::info!(dir = %p.display(), "removing pins of another ABI version");
            tc.extend(read_tc_marks(&p.join("tc")));
            let _ = fs::remove_dir_all(&p);
        }
    }
    tc
}

fn tc_attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    }
}

/// The OS error code somewhere in an error's chain (netlink errors carry the kernel's).
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(n) = c
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(n);
        }
        if let Some(n) = c
            .downcast_ref::<aya::sys::NetlinkError>()
            .and_then(aya::sys::NetlinkError::raw_os_error)
        {
            return Some(n);
        }
        cur = c.source();
    }
    None
}

/// The filter (or its interface) no longer exists.
fn filter_gone(e: &ProgramError) -> bool {
    matches!(
        os_error(e).map(Errno::from_raw),
        Some(Errno::ENOENT | Errno::ENODEV)
    )
}

/// Adds the clsact qdisc to `iface` unless it is there already.
fn add_clsact(iface: &str) -> Result<(), DataplaneError> {
    match aya::programs::tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(()),
        Err(e) if os_error(&e).map(Errno::from_raw) == Some(Errno::EEXIST) => Ok(()),
        Err(source) => Err(DataplaneError::Clsact {
            iface: iface.to_owned(),
            source,
        }),
    }
}

/// Replaces the program of our filter (an earlier run's) in one netlink request, or, when
/// there is none, adds the filter at [`TC_PRIORITY`] / [`TC_HANDLE`]. The bool: replaced.
fn tc_attach_or_replace(
    ebpf: &mut Ebpf,
    pname: &'static str,
    iface: &str,
    hook: Hook,
) -> Result<(SchedClassifierLink, bool), DataplaneError> {
    let prog = classifier(ebpf, pname)?;
    let ferr = |source| DataplaneError::TcFilter {
        iface: iface.to_owned(),
        hook,
        source,
    };
    let attach_type = tc_attach_type(hook);
    let handle = TcHandle::from(TC_HANDLE);
    let ours = SchedClassifierLink::attached(iface, attach_type, TC_PRIORITY, handle, None)
        .map_err(|e| ferr(ProgramError::IOError(e)))?;
    // Without NLM_F_CREATE the kernel only replaces: ENOENT when there is no such filter.
    match prog.attach_to_link(ours) {
        Ok(id) => return Ok((prog.take_link(id).map_err(ferr)?, true)),
        Err(e) if filter_gone(&e) => {}
        Err(e) => {
            tracing::debug!(%iface, %hook, error = %e, "replacing the tc filter failed; adding one")
        }
    }
    let id = prog
        .attach_with_options(
            iface,
            attach_type,
            TcAttachOptions::Netlink(NlOptions {
                priority: TC_PRIORITY,
                handle,
                classid: None,
            }),
        )
        .map_err(ferr)?;
    Ok((prog.take_link(id).map_err(ferr)?, false))
}

/// Deletes our filter on `iface` at `hook`; one already gone is fine (logged otherwise).
/// True when a filter was deleted.
fn delete_tc_filter(iface: &str, hook: Hook) -> bool {
    let handle = TcHandle::from(TC_HANDLE);
    let link =
        match SchedClassifierLink::attached(iface, tc_attach_type(hook), TC_PRIORITY, handle, None)
        {
            Ok(l) => l,
            // The interface is gone, and its filters with it.
            Err(_) => return false,
        };
    match link.detach() {
        Ok(()) => true,
        Err(e) if filter_gone(&e) => false,
        Err(e) => {
            tracing::warn!(%iface, %hook, error = %e, "deleting a stale tc filter");
            false
        }
    }
}

/// See [`crate::remove_instance`].
pub(crate) fn remove_instance(
    pin_dir: &Path,
    delete_filters: bool,
) -> Result<usize, DataplaneError> {
    let mut deleted = 0;
    if delete_filters && let Ok(rd) = fs::read_dir(pin_dir) {
        for abi_dir in rd.flatten() {
            for (iface, hook) in read_tc_marks(&abi_dir.path().join("tc")) {
                deleted += usize::from(delete_tc_filter(&iface, hook));
            }
        }
    }
    fs::remove_dir_all(pin_dir).map_err(|source| DataplaneError::PinDir {
        path: pin_dir.to_path_buf(),
        source,
    })?;
    Ok(deleted)
}

/// The (interface, hook) pairs marked under a `tc` directory (`<iface>/<hook>`).
fn read_tc_marks(tc_dir: &Path) -> Vec<(String, Hook)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(tc_dir) else {
        return out;
    };
    for iface in rd.flatten() {
        let Some(name) = iface.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(hooks) = fs::read_dir(iface.path()) else {
            continue;
        };
        for h in hooks.flatten() {
            let hook = match h.file_name().to_str() {
                Some("ingress") => Hook::Ingress,
                Some("egress") => Hook::Egress,
                _ => continue,
            };
            out.push((name.clone(), hook));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "23 27 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n\
                        45 23 0:40 / /sys/fs/bpf rw,relatime shared:8 - bpf bpf rw,mode=700\n";

    #[test]
    fn the_sysfs_of_ip_netns_exec_is_told_apart() {
        assert_eq!(sysfs_source(HOST), None);
        // `ip netns exec gw ...`: the namespace's own sysfs over the host's, named after it.
        let netns = format!("{HOST}52 49 0:41 / /sys rw,relatime - sysfs gw rw\n");
        assert_eq!(sysfs_source(&netns).as_deref(), Some("gw"));
        // The last mount at /sys is the one in force.
        let back = format!("{netns}60 49 0:42 / /sys rw,relatime - sysfs sysfs rw\n");
        assert_eq!(sysfs_source(&back), None);
        assert_eq!(sysfs_source("1 2 0:3 / /sys rw - sysfs none rw\n"), None);
        // Not a name that could be under /run/netns.
        assert_eq!(sysfs_source("1 2 0:3 / /sys rw - sysfs ../x rw\n"), None);
        assert_eq!(sysfs_source("garbage\n\n - \n"), None);
    }
}
