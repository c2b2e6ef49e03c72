//! defib's rescue: the library behind the `rescue` binary.
//!
//! As PID 1 in the rescue image, [`init::main`] mounts the kernel's
//! filesystems, loads drivers, finds the boot medium and the disks, decides a
//! verdict and writes a report. The formats the builder shares
//! ([`report::Report`], [`buildinfo::BuildInfo`]) live here too. The repair
//! engine is not in this crate yet; [`verdict::evaluate`] is where it goes.

pub mod buildinfo;
pub mod cmdline;
pub mod console;
pub mod dmi;
pub mod firmware;
pub mod init;
pub mod kmod;
pub mod medium;
pub mod mounts;
pub mod probe;
pub mod report;
pub mod shell;
pub mod verdict;

/// The rescue's version, printed in the banner and written in reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
