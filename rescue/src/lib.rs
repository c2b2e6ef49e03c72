//! defib's rescue: the library behind the `rescue` binary.
//!
//! Two kinds of code live here, kept apart:
//! - [`pid1`]: the rescue as `/init` in the image — the step table, console,
//!   module loading, mounts, the boot medium, the shell and the network.
//!   Kernel-facing, tested by booting the image (and on fake trees where it
//!   takes a root).
//! - Everything else is host-safe library code that works on a directory
//!   or a file: the repair engine ([`engine`], driven per volume by
//!   [`repair`]), the readers of Windows' formats, the journal, the report,
//!   and the formats and names the builder shares ([`layout`], [`bootargs`],
//!   [`buildinfo`], [`report`], [`playbook`], [`store`]). [`host`] runs the
//!   same engine on any Linux machine.

// The contract with the builder.
pub mod bootargs;
pub mod buildinfo;
pub mod layout;

// The run's record.
pub mod durable;
pub mod guard;
pub mod hash;
pub mod report;
pub mod runid;

// The repair engine and what it reads.
pub mod bcd;
pub mod bitlocker;
pub mod boothealth;
pub mod bup;
pub mod cli;
pub mod engine;
pub mod hivelog;
pub mod journal;
pub mod pe;
pub mod playbook;
pub mod quarantine;
pub mod repair;
pub mod store;
pub mod volstate;
pub mod windows;
pub mod winpath;
pub mod winreg;

// Disks and machines, each behind a root.
pub mod devmapper;
pub mod firmware;
pub mod probe;
pub mod secureboot;
pub mod syspart;
pub mod verdict;
pub mod volumes;

// Runs: PID 1 in the image, and host mode.
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod passphrase;
pub mod pid1;

/// The rescue's version, printed in the banner and written in reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
