//! The only crate that talks to aya: it loads the embedded eBPF object, attaches the TCX
//! programs, pins programs and maps under bpffs, owns every map and reads the ring buffer.
