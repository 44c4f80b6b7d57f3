//! The cloud app catalog: apps with their domains, IP ranges and risk attributes, the risk
//! score computed from those attributes, and the matcher that turns a name (SNI, DNS, HTTP
//! Host) or an IP address into an app. It never touches the kernel or the network.
#![forbid(unsafe_code)]
