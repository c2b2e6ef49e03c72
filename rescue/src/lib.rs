//! defib's rescue: the library behind the `rescue` binary.
//!
//! As PID 1 in the rescue image, [`init::main`] mounts the kernel's
//! filesystems, loads drivers, finds the boot medium and the disks, repairs
//! each Windows volume through [`repair`] and [`engine`], decides a verdict
//! and writes the reports. [`host`] runs the same engine on a Linux host.
//! The formats the builder shares ([`report::Report`],
//! [`buildinfo::BuildInfo`], [`playbook`], [`store`]) live here too.

pub mod bitlocker;
pub mod buildinfo;
pub mod bup;
pub mod cmdline;
pub mod console;
pub mod dmi;
pub mod engine;
pub mod firmware;
pub mod host;
pub mod init;
pub mod journal;
pub mod kmod;
pub mod medium;
pub mod mounts;
pub mod net;
pub mod pe;
pub mod playbook;
pub mod probe;
pub mod repair;
pub mod report;
pub mod shell;
pub mod store;
pub mod verdict;
pub mod volstate;
pub mod volumes;
pub mod windows;
pub mod winpath;
pub mod winreg;

/// The rescue's version, printed in the banner and written in reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
