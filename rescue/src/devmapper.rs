//! A thin device-mapper client: create a mapped device from a table, and
//! remove it — the four ioctls `dmsetup create` and `dmsetup remove` make
//! on `/dev/mapper/control` (linux/dm-ioctl.h, interface version 4).
//!
//! Why not the `devicemapper` crate: it brings nix, bitflags and a
//! semver-checked wrapper for every DM call, for the one job the rescue
//! has (activate a crypt/zero table and take it down again). This is the
//! whole protocol for that job, with the struct layout written out and the
//! key-bearing buffers wiped (`DM_SECURE_DATA_FLAG` asks the kernel to
//! wipe its copies too).
//!
//! Not here: the table itself (`bitlocker::dm` computes it), udev, name
//! lookups. The device node is `/dev/dm-<minor>`, which devtmpfs creates.

use anyhow::{bail, ensure, Context, Result};
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// `struct dm_ioctl` is 312 bytes: version[3], data_size, data_start,
/// target_count, open_count, flags, event_nr, padding (4 bytes each),
/// dev (u64), name[128], uuid[129], data[7].
const DM_IOCTL_SIZE: usize = 312;
/// `struct dm_target_spec` is 40 bytes: sector_start, length (u64),
/// status (s32), next (u32), target_type[16]; its parameters follow as a
/// NUL-terminated string.
const DM_TARGET_SPEC_SIZE: usize = 40;
const DM_NAME_LEN: usize = 128;
/// Interface version we speak (4.0.0: the kernel accepts any 4.x).
const DM_VERSION: [u32; 3] = [4, 0, 0];

// Command numbers (enum in dm-ioctl.h).
const DM_VERSION_CMD: u8 = 0;
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;

// Flags.
const DM_READONLY_FLAG: u32 = 1 << 0;
/// Ask the kernel to wipe the buffers it copied (they hold a key).
const DM_SECURE_DATA_FLAG: u32 = 1 << 15;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
fn request(nr: u8) -> libc::c_ulong {
    const IOC_READ_WRITE: libc::c_ulong = 3;
    (IOC_READ_WRITE << 30)
        | ((DM_IOCTL_SIZE as libc::c_ulong) << 16)
        | (0xfd << 8)
        | libc::c_ulong::from(nr)
}

/// One line of a table: `start length target params`.
pub struct TableLine<'a> {
    pub start: u64,
    pub len: u64,
    pub target: &'a str,
    pub params: &'a str,
}

/// Splits table text (one `start length target params…` per line).
pub fn parse_table(text: &str) -> Result<Vec<TableLine<'_>>> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let mut it = l.splitn(4, ' ');
        let (Some(s), Some(n), Some(t)) = (it.next(), it.next(), it.next()) else {
            bail!("table line {} is incomplete", i + 1);
        };
        out.push(TableLine {
            start: s
                .parse()
                .with_context(|| format!("table line {}: start", i + 1))?,
            len: n
                .parse()
                .with_context(|| format!("table line {}: length", i + 1))?,
            target: t,
            params: it.next().unwrap_or(""),
        });
    }
    Ok(out)
}

/// A request buffer: the header, then whatever follows it.
struct Buf(Vec<u8>);

impl Drop for Buf {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Buf {
    fn new(name: &str, extra: usize, flags: u32) -> Result<Buf> {
        ensure!(
            !name.is_empty() && name.len() < DM_NAME_LEN && !name.contains('/'),
            "device-mapper name {name:?} is not usable"
        );
        // Room for the answer of DM_VERSION / DEV_CREATE (no payload) too.
        let size = (DM_IOCTL_SIZE + extra).max(16 * 1024);
        let mut b = vec![0u8; size];
        for (i, v) in DM_VERSION.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b[12..16].copy_from_slice(&(size as u32).to_ne_bytes()); // data_size
        b[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes()); // data_start
        b[28..32].copy_from_slice(&flags.to_ne_bytes());
        b[48..48 + name.len()].copy_from_slice(name.as_bytes()); // name at 48
        Ok(Buf(b))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.0[at..at + 8].try_into().unwrap_or([0; 8]))
    }
}

fn ioctl(control: &Path, nr: u8, b: &mut Buf, what: &str) -> Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(control)
        .with_context(|| format!("opening {} (is dm-mod loaded?)", control.display()))?;
    // SAFETY: the buffer is at least DM_IOCTL_SIZE bytes and its data_size
    // field says how long it is; the kernel writes no further.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), request(nr) as _, b.0.as_mut_ptr()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        bail!("device-mapper {what}: {e}");
    }
    Ok(())
}

/// `/dev/mapper/control` under `root`.
pub fn control(root: &Path) -> PathBuf {
    root.join("dev/mapper/control")
}

/// The kernel's device-mapper version, e.g. `4.48.0`: a cheap check that
/// the driver is there before anything is attempted.
pub fn version(root: &Path) -> Result<String> {
    let mut b = Buf::new("defib", 0, 0)?;
    ioctl(&control(root), DM_VERSION_CMD, &mut b, "version")?;
    let v: Vec<String> = (0..3)
        .map(|i| u32::from_ne_bytes(b.0[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4])).to_string())
        .collect();
    Ok(v.join("."))
}

/// Creates device `name` from `table` and activates it. Returns the node,
/// `/dev/dm-<minor>` under `root`. On any failure the half-made device is
/// removed again.
pub fn create(root: &Path, name: &str, table: &str, read_only: bool) -> Result<PathBuf> {
    let ctl = control(root);
    let mut b = Buf::new(name, 0, 0)?;
    ioctl(&ctl, DM_DEV_CREATE, &mut b, &format!("create {name}"))?;
    let dev = b.u64_at(40);
    let res = (|| -> Result<()> {
        load(&ctl, name, table, read_only)?;
        // DEV_SUSPEND without the suspend flag resumes: the loaded table
        // becomes live.
        let mut b = Buf::new(name, 0, 0)?;
        ioctl(&ctl, DM_DEV_SUSPEND, &mut b, &format!("resume {name}"))
    })();
    if let Err(e) = res {
        let _ = remove(root, name);
        return Err(e);
    }
    // dev_t in the kernel's new encoding: minor = (dev & 0xff) | ((dev >> 12) & ~0xff).
    let minor = (dev & 0xff) | ((dev >> 12) & !0xffu64);
    Ok(root.join(format!("dev/dm-{minor}")))
}

fn load(ctl: &Path, name: &str, table: &str, read_only: bool) -> Result<()> {
    let lines = parse_table(table)?;
    ensure!(!lines.is_empty(), "empty device-mapper table");
    let mut payload = Vec::new();
    for l in &lines {
        ensure!(
            l.target.len() < 16,
            "target type {:?} is too long",
            l.target
        );
        let mut spec = vec![0u8; DM_TARGET_SPEC_SIZE];
        spec[0..8].copy_from_slice(&l.start.to_ne_bytes());
        spec[8..16].copy_from_slice(&l.len.to_ne_bytes());
        spec[24..24 + l.target.len()].copy_from_slice(l.target.as_bytes());
        let mut body = spec;
        body.extend_from_slice(l.params.as_bytes());
        body.push(0);
        // `next` is the offset from this spec to the next, 8-byte aligned.
        while !body.len().is_multiple_of(8) {
            body.push(0);
        }
        let next = body.len() as u32;
        body[20..24].copy_from_slice(&next.to_ne_bytes());
        payload.extend_from_slice(&body);
        body.zeroize();
    }
    let mut flags = DM_SECURE_DATA_FLAG;
    if read_only {
        flags |= DM_READONLY_FLAG;
    }
    let mut b = Buf::new(name, payload.len(), flags)?;
    b.0[DM_IOCTL_SIZE..DM_IOCTL_SIZE + payload.len()].copy_from_slice(&payload);
    payload.zeroize();
    b.0[20..24].copy_from_slice(&(lines.len() as u32).to_ne_bytes()); // target_count
    ioctl(
        ctl,
        DM_TABLE_LOAD,
        &mut b,
        &format!("load the table of {name}"),
    )
}

/// Removes device `name` (its table goes with it).
pub fn remove(root: &Path, name: &str) -> Result<()> {
    let mut b = Buf::new(name, 0, 0)?;
    ioctl(
        &control(root),
        DM_DEV_REMOVE,
        &mut b,
        &format!("remove {name}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // DM_VERSION and DM_TABLE_LOAD as strace prints them for dmsetup.
        assert_eq!(request(DM_VERSION_CMD), 0xc138_fd00);
        assert_eq!(request(DM_TABLE_LOAD), 0xc138_fd09);
        assert_eq!(request(DM_DEV_REMOVE), 0xc138_fd04);
    }

    #[test]
    fn table_lines_split_into_targets() {
        let t = "0 16 crypt aes-xts-plain64 00ff 0 /dev/sda3 68904\n16 128 zero\n";
        let l = parse_table(t).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].start, l[0].len, l[0].target), (0, 16, "crypt"));
        assert!(l[0].params.ends_with("/dev/sda3 68904"));
        assert_eq!((l[1].target, l[1].params), ("zero", ""));
        assert!(parse_table("0 x zero").is_err());
        assert!(parse_table("0").is_err());
    }

    #[test]
    fn names_that_cannot_be_dm_names_are_refused() {
        assert!(Buf::new("", 0, 0).is_err());
        assert!(Buf::new("a/b", 0, 0).is_err());
        assert!(Buf::new(&"x".repeat(200), 0, 0).is_err());
        let b = Buf::new("defib-sda3", 0, DM_READONLY_FLAG).unwrap();
        assert_eq!(&b.0[48..58], b"defib-sda3");
        assert_eq!(u32::from_ne_bytes(b.0[16..20].try_into().unwrap()), 312);
    }

    /// The host has no device-mapper (this machine's kernel lacks it), so
    /// the ioctls are proven by booting; here, a missing control node is a
    /// clear error.
    #[test]
    fn a_missing_control_node_says_what_to_load() {
        let d = tempfile::tempdir().unwrap();
        let e = version(d.path()).unwrap_err().to_string();
        assert!(e.contains("dm-mod"), "{e}");
    }
}
