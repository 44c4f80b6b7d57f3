//! The kernel/user ABI: every map key, map value and event shared by the eBPF probes and the
//! userspace dataplane, as `#[repr(C)]` plain data with explicit padding.
#![no_std]
