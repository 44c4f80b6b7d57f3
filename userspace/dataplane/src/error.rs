//! The dataplane's error type and the helpers that turn a missing map or an aya map error
//! into it, with the map's name.

use std::{io, net::IpAddr, path::PathBuf};

use aya::Ebpf;

/// Everything that can go wrong in the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("bpffs at {path}: {source}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("interface {name:?}: {source}")]
    Interface {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("loading the eBPF object (needs root or CAP_BPF+CAP_NET_ADMIN): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {0} missing from the embedded object")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} missing (already taken?)")]
    MissingMap(&'static str),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("event reader: {0}")]
    Io(#[from] io::Error),
    #[error("walking the flow map: {0}")]
    FlowWalk(#[source] io::Error),
    #[error("map {0} is not a hash map")]
    NotHashMap(&'static str),
    #[error("the event is not {expected}")]
    WrongEvent { expected: &'static str },
    #[error("client {client} and destination {destination} are of different address families")]
    MixedAddressFamilies { client: IpAddr, destination: IpAddr },
    #[error("the event reader must be created inside a tokio runtime")]
    NoTokioRuntime,
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error("adding the clsact qdisc on {iface}: {source}")]
    Clsact {
        iface: String,
        #[source]
        source: aya::programs::tc::TcError,
    },
    #[error("tc filter on {iface} {hook} (priority {prio:#x}, handle {handle:#x}): {source}", prio = crate::loader::TC_PRIORITY, handle = crate::loader::TC_HANDLE)]
    TcFilter {
        iface: String,
        hook: crate::Hook,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("steering route (`{command}`): {message}")]
    Route { command: String, message: String },
}

/// A map of the loaded object, or `MissingMap` (taken already, or not in the object).
pub(crate) fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, DataplaneError> {
    ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))
}

pub(crate) fn map_ref<'a>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<&'a aya::maps::Map, DataplaneError> {
    ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
}

/// Labels an aya map error with the map's name.
pub(crate) fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}
