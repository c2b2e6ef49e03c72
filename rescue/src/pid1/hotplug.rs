//! Devices as the kernel announces them: the `modalias` of every device
//! already in `/sys/devices` (coldplug), and kernel uevents
//! (NETLINK_KOBJECT_UEVENT) for those that appear later.
//!
//! This is not udev: no rules, no device nodes (devtmpfs makes them), no
//! events from other programs, no "change" handling beyond reading the
//! `MODALIAS=` key. Parsing is plain data; the socket is a thin frame.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// One kernel uevent: `ACTION@DEVPATH` then NUL-separated `KEY=value`
/// pairs (lib/kobject_uevent.c).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub subsystem: String,
    pub modalias: Option<String>,
    pub devname: Option<String>,
    pub devtype: Option<String>,
}

/// Parses one datagram; `None` for anything that is not a kernel uevent
/// (udev's own `libudev` messages, garbage).
pub fn parse(buf: &[u8]) -> Option<Uevent> {
    let mut parts = buf.split(|b| *b == 0).filter(|p| !p.is_empty());
    let head = std::str::from_utf8(parts.next()?).ok()?;
    let (action, devpath) = head.split_once('@')?;
    let mut ev = Uevent {
        action: action.to_string(),
        devpath: devpath.to_string(),
        ..Uevent::default()
    };
    for p in parts {
        let Ok(s) = std::str::from_utf8(p) else {
            continue;
        };
        let Some((k, v)) = s.split_once('=') else {
            continue;
        };
        match k {
            "ACTION" => ev.action = v.to_string(),
            "DEVPATH" => ev.devpath = v.to_string(),
            "SUBSYSTEM" => ev.subsystem = v.to_string(),
            "MODALIAS" => ev.modalias = Some(v.to_string()),
            "DEVNAME" => ev.devname = Some(v.to_string()),
            "DEVTYPE" => ev.devtype = Some(v.to_string()),
            _ => {}
        }
    }
    Some(ev)
}

/// The `modalias` of every device under `<root>/sys/devices`, in path
/// order. Symlinks (`subsystem`, `driver`, `device`) are not followed, so
/// each device is read once.
pub fn modaliases(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("sys/devices")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut subdirs = Vec::new();
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                subdirs.push(e.path());
            } else if t.is_file() && e.file_name() == "modalias" {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    let s = s.trim();
                    if !s.is_empty() {
                        out.push(s.to_string());
                    }
                }
            }
        }
        subdirs.sort();
        stack.extend(subdirs.into_iter().rev());
    }
    out
}

/// A socket on the kernel's uevent multicast group.
pub struct Socket {
    fd: OwnedFd,
}

/// What one wait for events brought.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Uevent>,
    /// The kernel dropped events (the buffer overflowed): rescan sysfs.
    pub overflowed: bool,
}

impl Socket {
    /// Opens and binds the socket; events from then on are queued for it.
    pub fn open() -> std::io::Result<Socket> {
        use rustix::net::{bind, netlink, socket_with, AddressFamily, SocketFlags, SocketType};
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(netlink::KOBJECT_UEVENT),
        )?;
        // A burst at boot (hundreds of devices) must not overflow: 4 MiB,
        // beyond rmem_max, which PID 1 (root) may force.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, 4 << 20);
        // Group 1: the kernel's own events (udev uses group 2).
        bind(&fd, &netlink::SocketAddrNetlink::new(0, 1))?;
        Ok(Socket { fd })
    }

    /// Waits up to `timeout` for events, then takes all that are queued.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<Batch> {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut batch = Batch::default();
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as i64,
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rustix::net::recv(
                self.fd.as_fd(),
                &mut buf[..],
                rustix::net::RecvFlags::empty(),
            ) {
                Ok((n, _)) => {
                    if let Some(ev) = parse(&buf[..n.min(buf.len())]) {
                        batch.events.push(ev);
                    }
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::NOBUFS) => batch.overflowed = true,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kernel_uevent() {
        let msg = b"add@/devices/pci0000:00/0000:00:04.0\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:04.0\0SUBSYSTEM=pci\0MODALIAS=pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02\0SEQNUM=812\0";
        let ev = parse(msg).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.subsystem, "pci");
        assert_eq!(ev.devpath, "/devices/pci0000:00/0000:00:04.0");
        assert_eq!(
            ev.modalias.as_deref(),
            Some("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02")
        );
        let blk = parse(b"add@/devices/x/block/sda\0SUBSYSTEM=block\0DEVNAME=sda\0DEVTYPE=disk\0")
            .unwrap();
        assert_eq!(
            (blk.devname.as_deref(), blk.devtype.as_deref()),
            (Some("sda"), Some("disk"))
        );
        assert_eq!(blk.modalias, None);
    }

    #[test]
    fn rejects_what_is_not_a_kernel_uevent() {
        assert_eq!(parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"\xff\xfe@x"), None);
    }

    #[test]
    fn reads_modaliases_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("sys/devices/pci0000:00/0000:00:1f.2");
        std::fs::create_dir_all(dev.join("ata1")).unwrap();
        std::fs::write(dev.join("modalias"), "pci:v00008086d00002922\n").unwrap();
        std::fs::write(dev.join("ata1/modalias"), "\n").unwrap();
        let cpu = dir.path().join("sys/devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(
            cpu.join("modalias"),
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0000\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(&dev, dev.join("ata1/subsystem")).unwrap();
        assert_eq!(
            modaliases(dir.path()),
            [
                "pci:v00008086d00002922",
                "cpu:type:x86,ven0000fam0006mod003F:feature:,0000"
            ]
        );
    }
}
