//! containerlab topologies on network namespaces: [`topology`] reads and checks the files,
//! [`runner`] builds and tears labs down. The `serval-lab` binary is the command line.

pub mod runner;
pub mod topology;
