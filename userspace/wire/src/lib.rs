//! Pure protocol parsers: bytes in, typed values or typed errors out. No I/O, no clocks,
//! no global state. The flow table (in `tollgate-discovery`) feeds these parsers with the
//! first flight of each flow, whether it came from the kernel's ring buffer or a pcap file.
#![forbid(unsafe_code)]
