//! newc ("SVR4 portable ASCII") cpio archives: the format the Linux kernel
//! unpacks as an initramfs (kernel docs: filesystems/ramfs-rootfs-initramfs,
//! format described in cpio(5) under "New ASCII Format").
//!
//! This module writes archives from an in-memory tree of paths and reads them
//! back for tests and `defib inspect`. It is not a general cpio tool: it only
//! knows directories, regular files and symlinks (no device nodes, FIFOs or
//! hard links), it never touches the host filesystem, and it writes every
//! entry as root-owned with one fixed mtime so the same tree always gives the
//! same bytes.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};

/// newc magic, cpio(5): "070701" (the CRC variant "070702" is not accepted).
const MAGIC: &[u8; 6] = b"070701";
/// Fixed header: 6-byte magic + 13 fields of 8 hex digits, cpio(5).
const HEADER_LEN: usize = 6 + 13 * 8;
/// Name of the end-of-archive marker entry, cpio(5).
const TRAILER: &str = "TRAILER!!!";

/// File type bits of `c_mode`, as in stat(2) / cpio(5).
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
/// Permission bits (incl. setuid/setgid/sticky) a caller may pass in `mode`.
const PERM_MASK: u32 = 0o7777;

/// One node of the archive. `mode` holds permission bits only; the writer
/// adds the file type bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

/// An initramfs (or initramfs segment) being assembled, keyed by path
/// without a leading slash, e.g. `lib/modules/6.12/modules.dep`.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a regular file.
    pub fn add_file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Result<()> {
        check_mode(path, mode)?;
        self.insert(
            path,
            Entry::File {
                mode,
                data: data.into(),
            },
        )
    }

    /// Adds (or replaces the mode of) a directory. Parents of any entry are
    /// created by the writer anyway; this is for empty dirs or other modes.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        check_mode(path, mode)?;
        self.insert(path, Entry::Dir { mode })
    }

    /// Adds (or replaces) a symlink. The target is stored verbatim: the
    /// kernel resolves it inside the initramfs at run time, so absolute
    /// targets like `/bin/rescue` are fine here.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        if target.is_empty() || target.contains('\0') {
            bail!("symlink {path:?}: target {target:?} is empty or contains NUL");
        }
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Number of explicitly added entries (implicit parents not counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(normalize(path).ok()?.as_str())
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        let path = normalize(path)?;
        // A file can't be a parent and a directory can't turn into a file
        // under its children: catch it here, where the caller's path is known.
        for parent in parents(&path) {
            if let Some(e) = self.entries.get(parent) {
                if !matches!(e, Entry::Dir { .. }) {
                    bail!("cannot add {path:?}: its parent {parent:?} is not a directory");
                }
            }
        }
        if !matches!(entry, Entry::Dir { .. }) {
            let prefix = format!("{path}/");
            if let Some((child, _)) = self.entries.range(prefix.clone()..).next() {
                if child.starts_with(&prefix) {
                    bail!("cannot add {path:?} as a non-directory: {child:?} is inside it");
                }
            }
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Writes the archive in newc format: missing parent directories (0755)
    /// first, then every entry in path order, then the trailer. Inodes count
    /// from 1 in write order; owner, device and mtime are fixed, so the
    /// output depends only on the tree and `mtime`.
    pub fn write_newc<W: Write>(&self, out: W, mtime: u32) -> Result<()> {
        let mut out = CountingWriter { inner: out, pos: 0 };

        // Merge implicit parents in. Because a path sorts before every path
        // that extends it ("a" < "a/b"), plain BTreeMap order puts each
        // directory before its children.
        let mut all: BTreeMap<&str, EntryRef> = BTreeMap::new();
        for (path, entry) in &self.entries {
            for parent in parents(path) {
                all.entry(parent).or_insert(EntryRef::ImplicitDir);
            }
            all.insert(path, EntryRef::Explicit(entry));
        }

        let mut ino: u32 = 0;
        for (path, entry) in all {
            ino = ino.checked_add(1).context("too many cpio entries")?;
            let (mode, nlink, data): (u32, u32, &[u8]) = match entry {
                EntryRef::ImplicitDir => (S_IFDIR | 0o755, 2, &[]),
                EntryRef::Explicit(Entry::Dir { mode }) => (S_IFDIR | mode, 2, &[]),
                EntryRef::Explicit(Entry::File { mode, data }) => (S_IFREG | mode, 1, data),
                EntryRef::Explicit(Entry::Symlink { target }) => {
                    (S_IFLNK | 0o777, 1, target.as_bytes())
                }
            };
            write_entry(&mut out, path, ino, mode, nlink, mtime, data)
                .with_context(|| format!("writing cpio entry {path:?}"))?;
        }
        // GNU cpio and the kernel's gen_init_cpio both give the trailer
        // nlink 1 and everything else 0.
        write_entry(&mut out, TRAILER, 0, 0, 1, 0, &[]).context("writing cpio trailer")?;
        out.inner.flush().context("flushing cpio archive")?;
        Ok(())
    }
}

enum EntryRef<'a> {
    ImplicitDir,
    Explicit(&'a Entry),
}

/// Tracks the absolute offset so padding is relative to the archive start,
/// which is what the kernel's unpacker aligns against.
struct CountingWriter<W: Write> {
    inner: W,
    pos: u64,
}

impl<W: Write> CountingWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> std::io::Result<()> {
        let pad = (4 - (self.pos % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

fn write_entry<W: Write>(
    out: &mut CountingWriter<W>,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    data: &[u8],
) -> Result<()> {
    let filesize = u32::try_from(data.len()).context("file larger than 4 GiB (newc limit)")?;
    // c_namesize counts the terminating NUL, cpio(5).
    let namesize = u32::try_from(name.len() + 1).context("name too long")?;
    // Field order, cpio(5) newc: ino mode uid gid nlink mtime filesize
    // devmajor devminor rdevmajor rdevminor namesize check. Upper-case hex
    // like the kernel's usr/gen_init_cpio.c.
    let fields = [
        ino, mode, 0, 0, nlink, mtime, filesize, 0, 0, 0, 0, namesize, 0,
    ];
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    for f in fields {
        header.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    debug_assert_eq!(header.len(), HEADER_LEN);
    out.put(&header).context("writing header")?;
    out.put(name.as_bytes()).context("writing name")?;
    out.put(&[0]).context("writing name")?;
    out.pad4().context("writing padding")?;
    out.put(data).context("writing data")?;
    out.pad4().context("writing padding")?;
    Ok(())
}

fn check_mode(path: &str, mode: u32) -> Result<()> {
    if mode & !PERM_MASK != 0 {
        bail!("{path:?}: mode {mode:#o} has bits beyond the permission bits (0o7777)");
    }
    Ok(())
}

/// Strips one leading `/` and any trailing `/`, then refuses anything that
/// could land outside the archive root or confuse the unpacker: empty
/// paths, a still-absolute path (`//etc`), empty, `.` or `..` components,
/// and NUL.
fn normalize(path: &str) -> Result<String> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        bail!("cpio path {path:?} is empty");
    }
    if p.contains('\0') {
        bail!("cpio path {path:?} contains NUL");
    }
    if p.starts_with('/') {
        bail!("cpio path {path:?} is absolute");
    }
    for comp in p.split('/') {
        match comp {
            "" => bail!("cpio path {path:?} has an empty component"),
            "." | ".." => bail!("cpio path {path:?} has a {comp:?} component"),
            _ => {}
        }
    }
    Ok(p.to_string())
}

/// Proper ancestors of a normalized path, shortest first: "a/b/c" -> a, a/b.
fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Parses an uncompressed newc archive up to its `TRAILER!!!` entry.
///
/// The input is treated as hostile: every length is bounds-checked, names
/// must be relative (unlike the writer, a leading `/` is refused here) and free of `..`/`.` components, and anything this
/// module can't represent (device nodes, FIFOs) is an error rather than
/// silently dropped. A leading `./` is accepted and stripped, and a root
/// entry named `.` is skipped, because `find . | cpio -o` archives have them.
/// Bytes after the trailer (padding, further concatenated archives) are
/// ignored.
pub fn read_newc(bytes: &[u8]) -> Result<Vec<(String, Entry)>> {
    let mut out = Vec::new();
    let mut pos: usize = 0;
    loop {
        let header = bytes.get(pos..pos + HEADER_LEN).ok_or_else(|| {
            anyhow!("truncated cpio archive: header at offset {pos} cut short (no {TRAILER} seen)")
        })?;
        if &header[..6] != MAGIC {
            bail!("bad cpio magic at offset {pos}: expected 070701 (newc)");
        }
        let field = |i: usize| -> Result<u32> {
            let raw = &header[6 + i * 8..6 + (i + 1) * 8];
            let s = std::str::from_utf8(raw)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| anyhow!("bad hex field in cpio header at offset {pos}"))?;
            u32::from_str_radix(s, 16).context("bad hex field in cpio header")
        };
        let mode = field(1)?;
        let filesize = field(6)? as usize;
        let namesize = field(11)? as usize;
        if namesize == 0 {
            bail!("cpio entry at offset {pos} has c_namesize 0");
        }

        let name_start = pos + HEADER_LEN;
        let name_end = name_start
            .checked_add(namesize)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                anyhow!("truncated cpio archive: name at offset {name_start} cut short")
            })?;
        let raw_name = &bytes[name_start..name_end];
        let (last, name) = raw_name
            .split_last()
            .ok_or_else(|| anyhow!("empty cpio name at offset {name_start}"))?;
        if *last != 0 || name.contains(&0) {
            bail!("cpio name at offset {name_start} is not a single NUL-terminated string");
        }
        let name = std::str::from_utf8(name)
            .with_context(|| format!("cpio name at offset {name_start} is not UTF-8"))?;

        let data_start = align4(name_end);
        let data_end = data_start
            .checked_add(filesize)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| anyhow!("truncated cpio archive: data of {name:?} cut short"))?;
        let data = &bytes[data_start..data_end];
        pos = align4(data_end);

        if name == TRAILER {
            return Ok(out);
        }
        if name == "." {
            continue;
        }
        let offset = name_start - HEADER_LEN;
        if name.starts_with('/') {
            bail!("refusing cpio entry at offset {offset}: {name:?} is absolute");
        }
        let path = normalize(name.strip_prefix("./").unwrap_or(name))
            .with_context(|| format!("refusing cpio entry at offset {offset}"))?;
        let perm = mode & PERM_MASK;
        let entry = match mode & S_IFMT {
            S_IFDIR => {
                if filesize != 0 {
                    bail!("cpio directory {path:?} carries {filesize} bytes of data");
                }
                Entry::Dir { mode: perm }
            }
            S_IFREG => Entry::File {
                mode: perm,
                data: data.to_vec(),
            },
            S_IFLNK => {
                let target = std::str::from_utf8(data)
                    .ok()
                    .filter(|t| !t.is_empty() && !t.contains('\0'))
                    .ok_or_else(|| anyhow!("cpio symlink {path:?} has a bad target"))?;
                Entry::Symlink {
                    target: target.to_string(),
                }
            }
            other => bail!("cpio entry {path:?} has unsupported file type {other:#o}"),
        };
        out.push((path, entry));
    }
}

fn align4(n: usize) -> usize {
    // Cannot overflow in practice (n <= bytes.len() <= isize::MAX).
    n.div_ceil(4) * 4
}

/// [`compress_zstd`] through a cache: zstd at level 19 takes half a
/// minute for an initramfs of decompressed modules, and a rebuild from
/// the same inputs (a new payload, a test) compresses the same bytes
/// again. The cache holds outputs by the SHA-256 of their input and the
/// level (`<cache>/zstd/`, the newest 16 kept); a cached output is used
/// only after it decompresses to exactly `data`. Any cache trouble falls
/// back to compressing. `DEFIB_ZSTD_CACHE=0` turns it off.
pub fn compress_zstd_cached(data: &[u8], level: i32) -> Result<Vec<u8>> {
    compress_zstd_kept(data, level, "zstd", 16)
}

/// [`compress_zstd_cached`] in the cache's folder `sub`, keeping its newest
/// `keep` entries: the modules (`.ko.zst`, a few hundred per kernel) have
/// their own folder so they do not push the initramfs segments out.
pub fn compress_zstd_kept(data: &[u8], level: i32, sub: &str, keep: usize) -> Result<Vec<u8>> {
    let dir = if std::env::var_os("DEFIB_ZSTD_CACHE").is_some_and(|v| v == "0") {
        None
    } else {
        crate::fetch::cache_dir().ok().map(|d| d.join(sub))
    };
    compress_zstd_in(data, level, dir.as_deref().map(|d| (d, keep)))
}

/// [`compress_zstd_cached`] with the cache folder and how many entries it
/// keeps given (`None`: no cache).
pub fn compress_zstd_in(
    data: &[u8],
    level: i32,
    dir: Option<(&std::path::Path, usize)>,
) -> Result<Vec<u8>> {
    let Some((dir, keep)) = dir else {
        return compress_zstd(data, level);
    };
    let path = dir.join(format!("{}-{level}.zst", crate::sha256_hex(data)));
    if let Ok(z) = std::fs::read(&path) {
        if zstd::bulk::decompress(&z, data.len()).is_ok_and(|d| d == data) {
            // Touched, so the newest-kept rule counts it as used.
            let _ = std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(z);
        }
    }
    let z = compress_zstd(data, level)?;
    let _ = keep_in_cache(dir, &path, &z, keep);
    Ok(z)
}

/// Writes one cache entry (temp name, then rename) and keeps the newest
/// `keep`.
fn keep_in_cache(
    dir: &std::path::Path,
    path: &std::path::Path,
    z: &[u8],
    keep: usize,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, z)?;
    std::fs::rename(&tmp, path)?;
    let mut entries: Vec<(std::time::SystemTime, std::path::PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "zst"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    entries.sort();
    let n = entries.len().saturating_sub(keep);
    for (_, p) in entries.into_iter().take(n) {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Compresses with zstd at `level`: one frame, single-threaded, with the
/// content-size and checksum flags always on (RFC 8878 §3.1.1.1.1
/// Frame_Header_Descriptor), so the same input and level give the same
/// frame on every run and host.
pub fn compress_zstd(data: &[u8], level: i32) -> Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level).context("creating zstd compressor")?;
    c.set_parameter(CParameter::ContentSizeFlag(true))
        .context("setting zstd content-size flag")?;
    c.set_parameter(CParameter::ChecksumFlag(true))
        .context("setting zstd checksum flag")?;
    c.set_parameter(CParameter::NbWorkers(0))
        .context("making zstd single-threaded")?;
    c.compress(data).context("compressing with zstd")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_file("init", 0o755, b"#!/bin/rescue\n".to_vec())
            .unwrap();
        a.add_file(
            "lib/modules/6.12/kernel/fs/ntfs3/ntfs3.ko.xz",
            0o644,
            vec![7u8; 1001],
        )
        .unwrap();
        a.add_file("/etc/hostname", 0o644, b"defib\n".to_vec())
            .unwrap();
        a.add_dir("proc", 0o555).unwrap();
        a.add_symlink("bin/sh", "/bin/rescue").unwrap();
        a.add_file("empty", 0o600, Vec::new()).unwrap();
        a
    }

    fn write(a: &Archive) -> Vec<u8> {
        let mut out = Vec::new();
        a.write_newc(&mut out, 1_700_000_000).unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let a = sample();
        let entries = read_newc(&write(&a)).unwrap();
        let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "empty",
                "etc",
                "etc/hostname",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.12",
                "lib/modules/6.12/kernel",
                "lib/modules/6.12/kernel/fs",
                "lib/modules/6.12/kernel/fs/ntfs3",
                "lib/modules/6.12/kernel/fs/ntfs3/ntfs3.ko.xz",
                "proc",
            ]
        );
        for (path, entry) in &entries {
            match a.get(path) {
                Some(orig) => assert_eq!(orig, entry, "{path}"),
                None => assert_eq!(entry, &Entry::Dir { mode: 0o755 }, "{path}"),
            }
        }
    }

    #[test]
    fn parents_come_first_and_once() {
        let mut a = Archive::new();
        a.add_file("a/b/c/d", 0o644, b"x".to_vec()).unwrap();
        a.add_file("a/b/e", 0o644, b"y".to_vec()).unwrap();
        a.add_file("a-b", 0o644, b"z".to_vec()).unwrap();
        a.add_dir("a/b", 0o700).unwrap();
        let entries = read_newc(&write(&a)).unwrap();
        let mut seen = std::collections::HashSet::new();
        for (path, _) in &entries {
            assert!(seen.insert(path.clone()), "{path} emitted twice");
            for parent in parents(path) {
                assert!(seen.contains(parent), "{parent} not before {path}");
            }
        }
        // The explicit mode wins over the implicit 0755.
        let ab = entries.iter().find(|(p, _)| p == "a/b").unwrap();
        assert_eq!(ab.1, Entry::Dir { mode: 0o700 });
    }

    #[test]
    fn deterministic() {
        assert_eq!(write(&sample()), write(&sample()));
        // and the mtime is the only time input
        let mut other = Vec::new();
        sample().write_newc(&mut other, 1).unwrap();
        assert_ne!(write(&sample()), other);
    }

    #[test]
    fn inodes_sequential_and_headers_aligned() {
        let bytes = write(&sample());
        let mut pos = 0;
        let mut expect_ino = 1;
        loop {
            assert_eq!(pos % 4, 0, "header at {pos} not 4-aligned");
            assert_eq!(&bytes[pos..pos + 6], MAGIC);
            let field = |i: usize| {
                let s =
                    std::str::from_utf8(&bytes[pos + 6 + i * 8..pos + 6 + (i + 1) * 8]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let (ino, filesize, namesize) = (field(0), field(6), field(11));
            let name = &bytes[pos + HEADER_LEN..pos + HEADER_LEN + namesize - 1];
            if name == TRAILER.as_bytes() {
                assert_eq!(align4(pos + HEADER_LEN + namesize), bytes.len());
                break;
            }
            assert_eq!(ino, expect_ino);
            expect_ino += 1;
            assert_eq!(field(2), 0, "uid");
            assert_eq!(field(3), 0, "gid");
            let data_start = align4(pos + HEADER_LEN + namesize);
            pos = align4(data_start + filesize);
        }
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn bad_paths_rejected_on_add() {
        let mut a = Archive::new();
        for bad in [
            "",
            "/",
            "../etc/passwd",
            "a/../b",
            "./a",
            "a/./b",
            "//etc",
            "a//b",
            "a\0b",
        ] {
            assert!(
                a.add_file(bad, 0o644, b"x".to_vec()).is_err(),
                "{bad:?} accepted"
            );
            assert!(a.add_dir(bad, 0o755).is_err(), "{bad:?} accepted");
            assert!(a.add_symlink(bad, "x").is_err(), "{bad:?} accepted");
        }
        assert!(a.is_empty());
        assert!(
            a.add_file("x", 0o100644, b"".to_vec()).is_err(),
            "type bits accepted"
        );
    }

    #[test]
    fn file_as_parent_rejected() {
        let mut a = Archive::new();
        a.add_file("a", 0o644, b"x".to_vec()).unwrap();
        assert!(a.add_file("a/b", 0o644, b"y".to_vec()).is_err());
        a.add_file("d/e", 0o644, b"y".to_vec()).unwrap();
        assert!(a.add_symlink("d", "elsewhere").is_err());
    }

    /// Builds a raw newc entry by hand, bypassing the writer's checks.
    fn raw_entry(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
        let mut out = CountingWriter {
            inner: Vec::new(),
            pos: 0,
        };
        write_entry(&mut out, name, 1, mode, 1, 0, data).unwrap();
        out.inner
    }

    fn trailer() -> Vec<u8> {
        raw_entry(TRAILER, 0, &[])
    }

    #[test]
    fn hostile_traversal_rejected_on_read() {
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", "./../x"] {
            let mut bytes = raw_entry(bad, S_IFREG | 0o644, b"root::0:0::/:/bin/sh\n");
            bytes.extend(trailer());
            let err = read_newc(&bytes).unwrap_err();
            assert!(format!("{err:#}").contains("refusing"), "{bad}: {err:#}");
        }
    }

    #[test]
    fn dot_prefix_and_root_accepted_on_read() {
        let mut bytes = raw_entry(".", S_IFDIR | 0o755, &[]);
        bytes.extend(raw_entry("./init", S_IFREG | 0o755, b"x"));
        bytes.extend(trailer());
        let entries = read_newc(&bytes).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "init");
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let bytes = write(&sample());
        // Every proper prefix must fail cleanly (and never panic): even a
        // cut inside the trailer's padding is a truncated archive.
        for cut in 0..bytes.len() {
            assert!(read_newc(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
        assert!(read_newc(&bytes).is_ok());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(read_newc(b"").is_err());
        assert!(read_newc(&[0u8; 200]).is_err());
        let mut bad_magic = write(&sample());
        bad_magic[5] = b'7';
        assert!(read_newc(&bad_magic).is_err());
        // c_namesize 0
        let mut zero_name = raw_entry("x", S_IFREG | 0o644, b"");
        zero_name[6 + 11 * 8..6 + 12 * 8].copy_from_slice(b"00000000");
        assert!(read_newc(&zero_name).is_err());
        // huge c_filesize
        let mut huge = raw_entry("x", S_IFREG | 0o644, b"abc");
        huge[6 + 6 * 8..6 + 7 * 8].copy_from_slice(b"FFFFFFFF");
        assert!(read_newc(&huge).is_err());
        // non-hex digit
        let mut nonhex = raw_entry("x", S_IFREG | 0o644, b"abc");
        nonhex[6] = b'g';
        assert!(read_newc(&nonhex).is_err());
        // device node
        let mut dev = raw_entry("dev/console", 0o020600, b"");
        dev.extend(trailer());
        assert!(read_newc(&dev).is_err());
    }

    #[test]
    fn zstd_is_deterministic_and_round_trips() {
        let data = write(&sample());
        let a = compress_zstd(&data, 19).unwrap();
        let b = compress_zstd(&data, 19).unwrap();
        // Through the cache: the first call stores, the second reads it
        // back; a damaged entry is noticed and replaced.
        let cache = tempfile::tempdir().unwrap();
        let dir = Some((cache.path(), 16));
        let c = compress_zstd_in(&data, 19, dir).unwrap();
        let d = compress_zstd_in(&data, 19, dir).unwrap();
        let entry = std::fs::read_dir(cache.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&entry, b"not zstd").unwrap();
        let e = compress_zstd_in(&data, 19, dir).unwrap();
        assert!(a == c && c == d && d == e);
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            a,
            "the damaged entry was replaced"
        );
        assert_eq!(a, b);
        assert_eq!(zstd::decode_all(&a[..]).unwrap(), data);
        // A folder that keeps two: a third input pushes out the oldest.
        let small = tempfile::tempdir().unwrap();
        for input in [b"one".as_slice(), b"two", b"three"] {
            compress_zstd_in(input, 3, Some((small.path(), 2))).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let names: Vec<String> = std::fs::read_dir(small.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let one = format!("{}-3.zst", crate::sha256_hex(b"one"));
        assert!(!names.contains(&one), "{names:?}");
        // An entry read back counts as used: "two" is read, so "four"
        // pushes out "three".
        compress_zstd_in(b"two", 3, Some((small.path(), 2))).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        compress_zstd_in(b"four", 3, Some((small.path(), 2))).unwrap();
        let two = small
            .path()
            .join(format!("{}-3.zst", crate::sha256_hex(b"two")));
        let three = small
            .path()
            .join(format!("{}-3.zst", crate::sha256_hex(b"three")));
        assert!(two.exists() && !three.exists(), "the read entry was kept");
        // Frame_Header_Descriptor: Content_Checksum_flag is bit 2, RFC 8878 §3.1.1.1.1.
        assert_eq!(&a[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
        assert_ne!(a[4] & 0b100, 0);
    }

    /// Cross-check with GNU cpio (installed by `scripts/setup --test`).
    #[test]
    fn gnu_cpio_lists_what_we_wrote() {
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            panic!("cpio(1) is not installed: run scripts/setup --test (apt-get install cpio)");
        };
        let bytes = write(&sample());
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&bytes));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            output.status.success(),
            "cpio -t failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listed: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let ours: Vec<String> = read_newc(&write(&sample()))
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(listed, ours);
    }
}
