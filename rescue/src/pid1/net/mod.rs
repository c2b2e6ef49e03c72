//! The network of a PXE-booted rescue: bring up the NIC the machine booted
//! from and deliver the report by HTTP PUT (`defib.report=http://IP/path/`).
//!
//! Debian's kernel has no `ip=` autoconfiguration, so the rescue reads the
//! address the boot loader already leased (iPXE passes
//! `ip=${ip}::${gateway}:${netmask}` and `BOOTIF=01-${mac:hexhyp}`), or runs
//! busybox `udhcpc` with this very binary as its script. The logic (parsing,
//! the HTTP request, retries) is plain code tested on the host; the
//! kernel-facing part is a handful of ioctls in [`kernel`].
//!
//! Not a network stack or an HTTP library: one interface, IPv4, one PUT,
//! TLS only to a pinned certificate ([`tls`]), no name resolution (a
//! static glibc binary cannot resolve names).

mod args;
pub mod client;
mod fetch;
mod http;
mod link;
#[cfg(test)]
mod tests;
pub mod tls;

pub use args::*;
pub use fetch::get;
pub use http::*;
pub use link::*;

/// The name the rescue binary is started under by udhcpc (a symlink to
/// `/init`); `main` checks `argv[0]` for it.
pub const HOOK_NAME: &str = "defib-udhcpc-hook";
/// Where the symlink lives in the running rescue.
pub const HOOK_PATH: &str = "run/defib/defib-udhcpc-hook";
/// Where the hook records the lease for PID 1.
pub const LEASE_PATH: &str = "run/defib/dhcp.lease";

/// Why the network part failed. The callers show it (its `Display` is the
/// line for the screen and the report); `deliver` matches on it to stop
/// retrying when the server refused the report outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// A value on the kernel command line is unusable.
    #[error("{0}")]
    BadArg(String),
    /// No link or address: no NIC, no lease, an ioctl refused.
    #[error("{0}")]
    Link(String),
    /// Connecting, sending or reading failed (worth another try).
    #[error("{0}")]
    Io(String),
    /// Not talked to over TLS: no `defib.tls=` pin for an https:// URL, or
    /// the server's certificate is not the pinned one.
    #[error("{0}")]
    Refused(String),
    /// The server answered with a status that is not 2xx.
    #[error("{addr} answered {line:?}")]
    Status {
        addr: String,
        code: u16,
        line: String,
    },
}
