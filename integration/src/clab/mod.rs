//! containerlab topologies on network namespaces: [`topology`] reads and checks the files,
//! [`runner`] builds and tears labs down, [`pods`] makes pods inside a running lab, and
//! [`scenario`] is what scenario tests share. The `serval-lab` binary is the command line.

pub mod pods;
pub mod runner;
pub mod scenario;
pub mod topology;
