//! The technician's shell (`defib.mode=shell`): busybox on the console.
//!
//! This is not a login or a getty: there is no password and no respawn. The
//! shell runs once, in its own session with the console as its controlling
//! terminal when the kernel allows it, and the rescue carries on when it exits.

use anyhow::{Context, Result};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The static busybox the builder puts in the initramfs.
pub const BUSYBOX: &str = "bin/busybox";

/// PATH for the shell; busybox links go into /bin, the rest are for tools a
/// later build may add.
pub const PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// The terminal the shell gets: the last `console=` entry, which is the one
/// the kernel makes `/dev/console` (Documentation/admin-guide/serial-console.rst).
/// `/dev/console` itself cannot become a controlling terminal, so job
/// control needs the real device.
pub fn shell_tty(consoles: &[PathBuf]) -> PathBuf {
    consoles
        .last()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/dev/console"))
}

/// Creates the bin directories and lets busybox link its applets into
/// `<root>/bin`.
pub fn install_busybox(root: &Path) -> Result<()> {
    for d in ["bin", "sbin", "usr/bin", "usr/sbin"] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    }
    let bb = root.join(BUSYBOX);
    let status = Command::new(&bb)
        .args(["--install", "-s"])
        .arg(root.join("bin"))
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {} --install", bb.display()))?;
    anyhow::ensure!(
        status.success(),
        "{} --install failed: {status}",
        bb.display()
    );
    Ok(())
}

/// Runs `busybox sh` on `tty` and waits for it to exit.
pub fn run_shell(root: &Path, tty: &Path) -> Result<ExitStatus> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(tty)
            .with_context(|| format!("opening {}", tty.display()))
    };
    let (i, o, e) = (open()?, open()?, open()?);
    let mut cmd = Command::new(root.join(BUSYBOX));
    cmd.arg("sh")
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/")
        .env("TERM", "linux")
        .env("PS1", "defib# ")
        .stdin(i)
        .stdout(o)
        .stderr(e);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes two raw syscalls, both async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // A new session, then the tty as its controlling terminal so
            // Ctrl-C reaches the shell's jobs. Best effort: without it the
            // shell still works, only job control is off.
            let _ = rustix::process::setsid();
            let _ = rustix::process::ioctl_tiocsctty(rustix::stdio::stdin());
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting busybox sh")?;
    child.wait().context("waiting for the shell")
}

/// Reaps children that were orphaned to PID 1 (background jobs of the
/// shell), so none linger as zombies.
pub fn reap_orphans() {
    use rustix::process::{waitpid, WaitOptions};
    while let Ok(Some(_)) = waitpid(None, WaitOptions::NOHANG) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_goes_on_the_last_console() {
        let c = [PathBuf::from("/dev/tty0"), PathBuf::from("/dev/ttyS0")];
        assert_eq!(shell_tty(&c), PathBuf::from("/dev/ttyS0"));
        assert_eq!(shell_tty(&[]), PathBuf::from("/dev/console"));
    }
}
