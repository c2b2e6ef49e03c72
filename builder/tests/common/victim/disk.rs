//! Disk assembly: partition tables (MBR, GPT), mkntfs, the ntfs-3g FUSE
//! mount, and the host tools behind them.

#![allow(unused_imports)]

use super::*;

pub const GUID_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const GUID_MSR: &str = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE";
pub const GUID_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B7268E99";

pub(super) struct GptPart {
    pub(super) ty: &'static str,
    pub(super) id: &'static str,
    /// [start, end) in sectors.
    pub(super) range: (u64, u64),
    pub(super) name: &'static str,
}

pub(super) enum Layout {
    /// One active NTFS partition over sectors [start, end).
    Mbr {
        total: u64,
        start: u64,
        end: u64,
    },
    Gpt {
        total: u64,
        parts: Vec<GptPart>,
    },
}

pub(super) fn build_disk(
    dir: &Path,
    disk: &Path,
    layout: &Layout,
    ntfs_offset: u64,
    ntfs_len: u64,
    tree: &Tree,
) -> Result<()> {
    let mkntfs = tool("mkntfs", "ntfs-3g")?;
    let work = tempfile::Builder::new()
        .prefix(".victim-make-")
        .tempdir_in(dir)
        .context("scratch folder")?;
    let vol = work.path().join("volume.img");
    File::create(&vol)?.set_len(ntfs_len)?;
    run(Command::new(mkntfs)
        .args([
            "-F", "-Q", "-s", "512", "-c", "4096", "-H", "255", "-S", "63", "-p",
        ])
        .arg((ntfs_offset / SECTOR).to_string())
        .arg(&vol))
    .context("formatting the NTFS volume")?;
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt)?;
    let m = Mount::new(&vol, &mnt, false)?;
    let filled = tree.write(&mnt);
    m.unmount()?;
    filled?;

    let (total, table) = match layout {
        Layout::Mbr { total, start, end } => (*total, mbr(*total, *start, *end)),
        Layout::Gpt { total, parts } => (*total, gpt(*total, parts)?),
    };
    let _ = fs::remove_file(disk);
    let mut f = File::create(disk).with_context(|| format!("creating {}", disk.display()))?;
    f.set_len(total * SECTOR)?;
    for (lba, bytes) in table {
        f.seek(SeekFrom::Start(lba * SECTOR))?;
        f.write_all(&bytes)?;
    }
    drop(f);
    sparse_copy(&vol, 0, ntfs_len, disk, ntfs_offset, false)
}

/// Copies `len` bytes from `src`@`src_off` to `dst`@`dst_off`, skipping
/// all-zero MiB blocks (so the result stays sparse). `create` makes `dst`
/// afresh with length `len`; else `dst` must exist (and is zero there).
pub(super) fn sparse_copy(
    src: &Path,
    src_off: u64,
    len: u64,
    dst: &Path,
    dst_off: u64,
    create: bool,
) -> Result<()> {
    let mut s = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut d = if create {
        let f = File::create(dst)?;
        f.set_len(len)?;
        f
    } else {
        OpenOptions::new().write(true).open(dst)?
    };
    s.seek(SeekFrom::Start(src_off))?;
    let mut buf = vec![0u8; MIB as usize];
    let zero = vec![0u8; MIB as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        s.read_exact(&mut buf[..n]).with_context(|| {
            format!("{} is shorter than its partition table says", src.display())
        })?;
        // Slice equality is a memcmp even in a debug build; iterating
        // byte by byte is not.
        if buf[..n] != zero[..n] {
            d.seek(SeekFrom::Start(dst_off + done))?;
            d.write_all(&buf[..n])?;
        }
        done += n as u64;
    }
    d.sync_all()?;
    Ok(())
}

/// CHS bytes of an MBR entry for `lba` on a 255-head, 63-sector geometry.
pub(super) fn chs(lba: u64) -> [u8; 3] {
    let (c, h, s) = (lba / (255 * 63), (lba / 63) % 255, lba % 63 + 1);
    if c > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    [
        h as u8,
        (s as u8) | (((c >> 2) & 0xC0) as u8),
        (c & 0xFF) as u8,
    ]
}

pub(super) fn mbr(_total: u64, start: u64, end: u64) -> Vec<(u64, Vec<u8>)> {
    let mut s = vec![0u8; 512];
    s[0x1B8..0x1BC].copy_from_slice(&0x5EED_0A11u32.to_le_bytes()); // disk signature
    let e = &mut s[0x1BE..0x1CE];
    e[0] = 0x80; // active: XP booted from it
    e[1..4].copy_from_slice(&chs(start));
    e[4] = 0x07; // NTFS
    e[5..8].copy_from_slice(&chs(end - 1));
    e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
    e[12..16].copy_from_slice(&((end - start) as u32).to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
    vec![(0, s)]
}

/// A GUID string → its on-disk bytes (first three fields little-endian).
pub fn guid_bytes(g: &str) -> Result<[u8; 16]> {
    let h: String = g.chars().filter(|c| *c != '-').collect();
    let raw = hex::decode(&h).with_context(|| format!("bad GUID {g}"))?;
    if raw.len() != 16 {
        bail!("bad GUID {g}");
    }
    let mut o = [0u8; 16];
    o[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    o[4..6].copy_from_slice(&[raw[5], raw[4]]);
    o[6..8].copy_from_slice(&[raw[7], raw[6]]);
    o[8..].copy_from_slice(&raw[8..]);
    Ok(o)
}

/// CRC-32 (IEEE, reflected) as the GPT header and entry array use.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

pub(super) fn gpt(total: u64, parts: &[GptPart]) -> Result<Vec<(u64, Vec<u8>)>> {
    // Protective MBR.
    let mut pmbr = vec![0u8; 512];
    let e = &mut pmbr[0x1BE..0x1CE];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    e[12..16].copy_from_slice(&((total - 1).min(0xFFFF_FFFF) as u32).to_le_bytes());
    pmbr[510] = 0x55;
    pmbr[511] = 0xAA;

    let mut entries = vec![0u8; 128 * 128];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut entries[i * 128..(i + 1) * 128];
        e[0..16].copy_from_slice(&guid_bytes(p.ty)?);
        e[16..32].copy_from_slice(&guid_bytes(p.id)?);
        e[32..40].copy_from_slice(&p.range.0.to_le_bytes());
        e[40..48].copy_from_slice(&(p.range.1 - 1).to_le_bytes());
        for (j, u) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    let entries_crc = crc32(&entries);
    let header = |me: u64, other: u64, entries_lba: u64| -> Result<Vec<u8>> {
        let mut h = vec![0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&me.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(total - 34).to_le_bytes());
        h[56..72].copy_from_slice(&guid_bytes("1c0e5d2a-9b7f-4e3c-8d1a-defb1c710a10")?);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        Ok(h)
    };
    Ok(vec![
        (0, pmbr),
        (1, header(1, total - 1, 2)?),
        (2, entries.clone()),
        (total - 33, entries),
        (total - 1, header(total - 1, 1, total - 33)?),
    ])
}

/// An ntfs-3g FUSE mount, run in the foreground as our child so that
/// unmounting can wait for it to have flushed and closed the image.
/// Dropping it unmounts (best effort); call [`Mount::unmount`] to see errors.
pub(super) struct Mount {
    pub(super) dir: PathBuf,
    pub(super) fusermount: PathBuf,
    pub(super) child: Option<Child>,
    pub(super) log: PathBuf,
}

impl Mount {
    pub(super) fn new(image: &Path, dir: &Path, read_only: bool) -> Result<Mount> {
        let ntfs3g = tool("ntfs-3g", "ntfs-3g")?;
        let fusermount = tool("fusermount", "fuse3")?;
        if !Path::new("/dev/fuse").exists() {
            bail!("/dev/fuse is missing: FUSE is needed to mount NTFS images (ntfs-3g)");
        }
        let log = dir.with_extension("ntfs-3g.log");
        let opts = if read_only {
            "ro,no_detach"
        } else {
            "no_detach"
        };
        let parent_dev = fs::metadata(dir.parent().unwrap_or(Path::new("/")))?.dev();
        let child = Command::new(ntfs3g)
            .arg("-o")
            .arg(opts)
            .arg(image)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting ntfs-3g")?;
        let mut m = Mount {
            dir: dir.to_path_buf(),
            fusermount,
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if fs::metadata(dir)
                .map(|md| md.dev() != parent_dev)
                .unwrap_or(false)
            {
                return Ok(m);
            }
            if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                m.child = None;
                bail!(
                    "ntfs-3g exited ({st}) without mounting {}: {}",
                    image.display(),
                    fs::read_to_string(&m.log).unwrap_or_default().trim()
                );
            }
            if Instant::now() > deadline {
                bail!("ntfs-3g did not mount {} within 20 s", image.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(super) fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    pub(super) fn is_mounted(&self) -> bool {
        let mi = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let want = self.dir.to_string_lossy().replace(' ', "\\040");
        mi.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == want))
    }

    pub(super) fn unmount_inner(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let mut last = String::new();
        for attempt in 0..10 {
            if !self.is_mounted() {
                break;
            }
            match Command::new(&self.fusermount)
                .arg("-u")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .output()
            {
                Ok(o) if o.status.success() => break,
                Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
        }
        // ntfs-3g flushes and closes the image after the unmount: wait for
        // it, so the image is complete before anyone copies it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(st)) if st.success() => break,
                Ok(Some(st)) => bail!(
                    "ntfs-3g exited with {st}: {}",
                    fs::read_to_string(&self.log).unwrap_or_default().trim()
                ),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = Command::new(&self.fusermount)
                        .arg("-u")
                        .arg("-z")
                        .arg(&self.dir)
                        .status();
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "could not unmount {} ({last}); ntfs-3g killed",
                        self.dir.display()
                    );
                }
            }
        }
        if self.is_mounted() {
            bail!("{} is still mounted after unmounting", self.dir.display());
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.unmount_inner();
    }
}

/// Finds `name` on PATH (and the sbin folders, where mkntfs lives), or an
/// error naming the Debian package that ships it.
pub fn tool(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(anyhow!(
        "{name} not found: install the Debian package {package} (apt-get install {package}, or scripts/setup --test)"
    ))
}

/// Runs a command; a failure carries its stderr.
pub(super) fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let prog = cmd.get_program().to_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", Path::new(&prog).display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            Path::new(OsStr::new(&prog)).display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
