//! McAfee VirusScan quarantine files (`.bup`): read the record of what was
//! quarantined, extract the original bytes, and find `.bup` files on a
//! mounted Windows volume. Also writes `.bup` files, for test fixtures and
//! the victim-disk maker.
//!
//! A `.bup` is an OLE2 compound file ([MS-CFB]) whose streams are each XORed
//! byte by byte with 0x6A. Stream `Details` is an INI text with a
//! `[Details]` section (`DetectionName=`, `CreationYear=` …) and one
//! `[File_N]` section per quarantined file (`OriginalName=C:\WINDOWS\…`);
//! stream `File_N` holds that file's bytes.
//!
//! This is not a general OLE2 or INI implementation (the `cfb` crate does
//! the compound file; we read only the root streams), it does not read any
//! other vendor's quarantine, and it never writes to the victim: a `.bup`
//! is untrusted input, parsed in memory with size caps.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

/// The XOR key McAfee VirusScan applies to every stream of a `.bup`
/// (publicly documented by quarantine-restore tools since VSE 8.x).
pub const XOR_KEY: u8 = 0x6A;
/// The stream holding the INI record.
const DETAILS_STREAM: &str = "Details";
/// A Details record is a few hundred bytes; 1 MiB leaves room for many
/// files and still refuses a stream built to exhaust memory.
const MAX_DETAILS: u64 = 1 << 20;
/// The rescue runs from RAM: one quarantined file above 512 MiB is not a
/// system file we would restore, and reading it could exhaust memory.
pub const MAX_STREAM: u64 = 512 << 20;
/// A `.bup` on disk may hold several streams; cap the whole file too.
pub const MAX_BUP_FILE: u64 = 1 << 30;
/// More `[File_N]` sections than this is not a real quarantine record.
const MAX_ENTRIES: usize = 4096;
/// How deep below a quarantine folder we look for `.bup` files (VSE keeps
/// them flat, but some versions use one sub-folder per event).
const SCAN_DEPTH: usize = 3;

/// One quarantined file inside a `.bup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BupEntry {
    /// The Windows path it was taken from, as McAfee wrote it
    /// (`C:\WINDOWS\system32\svchost.exe`).
    pub original_name: String,
    /// The stream holding its bytes (`File_0`), as named in the file.
    pub stream: String,
    /// Its size in bytes (the stream length).
    pub size: u64,
}

/// What a `.bup` says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bup {
    /// `DetectionName` from `[Details]`, e.g. `W32/Wecorl.a`.
    pub detection: Option<String>,
    /// Every key of `[Details]` in file order, for the report.
    pub details: Vec<(String, String)>,
    /// The quarantined files, in `File_N` order.
    pub entries: Vec<BupEntry>,
}

/// Parses a `.bup` held in memory. Errors say what is wrong with it; a
/// damaged `.bup` is never partly trusted.
pub fn read_bup(bytes: &[u8]) -> Result<Bup> {
    guarded(|| read_bup_inner(bytes))
}

/// Returns the original (un-XORed) bytes of `entry`, checking that the
/// stream still has the size [`read_bup`] saw.
pub fn extract(bytes: &[u8], entry: &BupEntry) -> Result<Vec<u8>> {
    guarded(|| {
        let mut cf = open_cfb(bytes)?;
        let (name, len) = find_stream(&cf, &entry.stream)?
            .ok_or_else(|| anyhow!("stream {} is missing from the .bup", entry.stream))?;
        if len != entry.size {
            bail!(
                "stream {} is {len} bytes, the record said {}: the .bup changed or is damaged",
                entry.stream,
                entry.size
            );
        }
        read_stream(&mut cf, &name, MAX_STREAM)
    })
}

/// Writes a `.bup` holding one file: `original_name` is its Windows path,
/// `detection` the detection name. The same arguments give the same bytes
/// (streams carry no timestamps, [MS-CFB] 2.6.1, and the record holds
/// fixed dates). Text is written as UTF-8, which [`read_bup`] reads back.
pub fn write_bup(original_name: &str, detection: &str, content: &[u8]) -> Result<Vec<u8>> {
    for (what, v) in [("original name", original_name), ("detection", detection)] {
        if v.chars().any(|c| c.is_control()) {
            bail!("{what} {v:?} has a control character: it would break the INI record");
        }
        // parse_ini trims whitespace and BOMs around every line and value
        // (hand-edited records have them), so they could not be read back.
        if v.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}') != v {
            bail!("{what} {v:?} starts or ends with blanks: the INI record would lose them");
        }
    }
    if original_name.trim().is_empty() {
        bail!("original name is empty");
    }
    // The fields McAfee VSE 8.x writes; dates fixed at the DAT 5958
    // incident (2010-04-21) so fixtures are reproducible.
    let details = format!(
        "[Details]\r\n\
         DetectionName={detection}\r\n\
         DetectionType=0\r\n\
         EngineMajor=5400\r\n\
         EngineMinor=1158\r\n\
         DATMajor=5958\r\n\
         DATMinor=0\r\n\
         DATType=0\r\n\
         ProductID=12106\r\n\
         CreationYear=2010\r\n\
         CreationMonth=4\r\n\
         CreationDay=21\r\n\
         CreationHour=14\r\n\
         CreationMinute=0\r\n\
         CreationSecond=0\r\n\
         TimeZoneName=UTC\r\n\
         TimeZoneOffset=0\r\n\
         NumberOfFiles=1\r\n\
         NumberOfValues=0\r\n\
         \r\n\
         [File_0]\r\n\
         ObjectType=5\r\n\
         OriginalName={original_name}\r\n\
         WasAlternateDataStream=0\r\n"
    );
    let mut cf =
        cfb::CompoundFile::create(Cursor::new(Vec::new())).context("creating the compound file")?;
    for (name, data) in [(DETAILS_STREAM, details.as_bytes()), ("File_0", content)] {
        let mut s = cf
            .create_stream(format!("/{name}"))
            .with_context(|| format!("creating stream {name}"))?;
        s.write_all(&xor(data))
            .with_context(|| format!("writing stream {name}"))?;
    }
    cf.flush().context("finishing the compound file")?;
    Ok(cf.into_inner().into_inner())
}

/// `.bup` files that parsed, with their path.
pub type Found = Vec<(PathBuf, Bup)>;
/// `.bup` files (or folders) that could not be read, with the reason.
pub type Unreadable = Vec<(PathBuf, String)>;
/// One INI `key=value` pair.
type Kv = (String, String);

/// The McAfee quarantine folders below a Windows volume root, as path
/// components matched without case: VSE 8.x's default `C:\Quarantine`,
/// then the per-machine data folders of XP/2003 and Vista and later.
const QUARANTINE_DIRS: &[&[&str]] = &[
    &["Quarantine"],
    &[
        "Documents and Settings",
        "All Users",
        "Application Data",
        "McAfee",
        "VirusScan",
        "Quarantine",
    ],
    &["ProgramData", "McAfee", "VirusScan", "Quarantine"],
];

/// Finds and parses every `.bup` in the McAfee quarantine folders under
/// `root` (a mounted Windows volume). Returns the good ones and, apart,
/// the ones that could not be read with the reason: one damaged `.bup`
/// must not hide the others. Symlinks are not followed.
pub fn scan_quarantine(root: &Path) -> (Found, Unreadable) {
    let mut dirs = Vec::new();
    for parts in QUARANTINE_DIRS {
        dirs.extend(resolve_nocase(root, parts));
    }
    dirs.sort();
    dirs.dedup();
    let mut files = Vec::new();
    let mut bad = Vec::new();
    for d in &dirs {
        collect_bups(d, SCAN_DEPTH, &mut files, &mut bad);
    }
    files.sort();
    files.dedup();
    let mut good = Vec::new();
    for f in files {
        match read_file_capped(&f).and_then(|b| read_bup(&b)) {
            Ok(bup) => good.push((f, bup)),
            Err(e) => bad.push((f, format!("{e:#}"))),
        }
    }
    bad.sort();
    (good, bad)
}

/// Every directory under `root` whose components match `parts` without
/// case (an NTFS volume mounted on Linux may present `QUARANTINE`).
fn resolve_nocase(root: &Path, parts: &[&str]) -> Vec<PathBuf> {
    let mut level = vec![root.to_path_buf()];
    for part in parts {
        let mut next = Vec::new();
        for dir in &level {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.flatten() {
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir && e.file_name().to_string_lossy().to_lowercase() == part.to_lowercase() {
                    next.push(e.path());
                }
            }
        }
        level = next;
    }
    level
}

fn collect_bups(
    dir: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    bad: &mut Vec<(PathBuf, String)>,
) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            bad.push((
                dir.to_path_buf(),
                format!("cannot list the quarantine folder: {e}"),
            ));
            return;
        }
    };
    for e in rd.flatten() {
        let path = e.path();
        // file_type() does not follow symlinks: a reparse point on the
        // victim could point anywhere, so it is neither read nor entered.
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            if depth > 0 {
                collect_bups(&path, depth - 1, files, bad);
            }
        } else if path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("bup"))
        {
            if t.is_file() {
                files.push(path);
            } else {
                bad.push((
                    path,
                    "not a regular file (symlink or reparse point); not followed".into(),
                ));
            }
        }
    }
}

fn read_file_capped(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).context("opening")?;
    let len = f.metadata().context("reading its size")?.len();
    if len > MAX_BUP_FILE {
        bail!("{len} bytes is larger than any quarantine record we accept ({MAX_BUP_FILE})");
    }
    let mut buf = Vec::new();
    f.take(MAX_BUP_FILE + 1)
        .read_to_end(&mut buf)
        .context("reading")?;
    Ok(buf)
}

/// Runs a parser over untrusted bytes with a panic guard: the rescue is
/// PID 1, and a panic deep in a dependency on a crafted file must become
/// an error about that file, not a kernel panic.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::guard::contain("the OLE2 compound file", f)
        .unwrap_or_else(|e| Err(anyhow!("{e} (malformed compound file)")))
}

fn read_bup_inner(bytes: &[u8]) -> Result<Bup> {
    let mut cf = open_cfb(bytes)?;
    let (details_name, _) = find_stream(&cf, DETAILS_STREAM)?
        .ok_or_else(|| anyhow!("no Details stream: not a McAfee .bup, or a damaged one"))?;
    let raw =
        read_stream(&mut cf, &details_name, MAX_DETAILS).context("reading the Details stream")?;
    let text = decode_text(&raw);
    let sections = parse_ini(&text);

    let details: Vec<(String, String)> = sections
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case("Details"))
        .map(|(_, kv)| kv.clone())
        .unwrap_or_default();
    let detection = lookup(&details, "DetectionName")
        .filter(|v| !v.is_empty())
        .map(str::to_string);

    let mut numbered: Vec<(u32, &str, &[Kv])> = Vec::new();
    for (name, kv) in &sections {
        let Some(n) = file_section_number(name) else {
            continue;
        };
        if numbered.iter().any(|(m, _, _)| *m == n) {
            bail!("section [{name}] appears twice in Details: ambiguous record");
        }
        if numbered.len() >= MAX_ENTRIES {
            bail!("more than {MAX_ENTRIES} [File_N] sections: not a real quarantine record");
        }
        numbered.push((n, name.as_str(), kv.as_slice()));
    }
    if numbered.is_empty() {
        bail!("Details lists no quarantined file (no [File_0] section)");
    }
    numbered.sort_by_key(|(n, _, _)| *n);

    let mut entries = Vec::new();
    for (n, section, kv) in numbered {
        let original = lookup(kv, "OriginalName")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow!("section [{section}] has no OriginalName"))?;
        let wanted = format!("File_{n}");
        let (stream, size) = find_stream(&cf, &wanted)?.ok_or_else(|| {
            anyhow!("section [{section}] is declared but stream {wanted} is missing")
        })?;
        entries.push(BupEntry {
            original_name: original.to_string(),
            stream,
            size,
        });
    }
    Ok(Bup {
        detection,
        details,
        entries,
    })
}

fn open_cfb(bytes: &[u8]) -> Result<cfb::CompoundFile<Cursor<&[u8]>>> {
    cfb::CompoundFile::open(Cursor::new(bytes))
        .map_err(|e| anyhow!("not an OLE2 compound file, so not a McAfee .bup: {e}"))
}

/// The root stream named `name` without case ([MS-CFB] 2.6.4 compares
/// names case-insensitively), with its name as stored and its length.
fn find_stream<F>(cf: &cfb::CompoundFile<F>, name: &str) -> Result<Option<(String, u64)>> {
    Ok(cf
        .read_root_storage()
        .find(|e| e.is_stream() && e.name().eq_ignore_ascii_case(name))
        .map(|e| (e.name().to_string(), e.len())))
}

fn read_stream<F: Read + std::io::Seek>(
    cf: &mut cfb::CompoundFile<F>,
    name: &str,
    cap: u64,
) -> Result<Vec<u8>> {
    let s = cf
        .open_stream(format!("/{name}"))
        .with_context(|| format!("opening stream {name}"))?;
    if s.len() > cap {
        bail!(
            "stream {name} is {} bytes, more than the {cap} we accept",
            s.len()
        );
    }
    let mut buf = Vec::new();
    s.take(cap + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading stream {name}"))?;
    if buf.len() as u64 > cap {
        bail!("stream {name} is longer than the {cap} bytes we accept");
    }
    Ok(xor(&buf))
}

fn xor(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b ^ XOR_KEY).collect()
}

/// `File_0` → 0; anything else → None.
fn file_section_number(section: &str) -> Option<u32> {
    let rest = section
        .get(..5)?
        .eq_ignore_ascii_case("File_")
        .then(|| &section[5..])?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

fn lookup<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// The Details text: UTF-16LE with a BOM, UTF-8 (BOM optional), or else
/// the ANSI code page VSE wrote, taken as Windows-1252.
fn decode_text(raw: &[u8]) -> String {
    if let Some(rest) = raw.strip_prefix(&[0xFF, 0xFE]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16_lossy(&units);
    }
    let raw = raw.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(raw);
    match std::str::from_utf8(raw) {
        Ok(s) => s.to_string(),
        Err(_) => raw.iter().map(|&b| cp1252(b)).collect(),
    }
}

/// Windows-1252 (the ANSI code page of Western-European Windows): Latin-1
/// except 0x80..=0x9F, from the Unicode mapping table CP1252.TXT.
fn cp1252(b: u8) -> char {
    const HIGH: [u16; 32] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
    ];
    match b {
        0x80..=0x9F => char::from_u32(u32::from(HIGH[usize::from(b - 0x80)])).unwrap_or('\u{FFFD}'),
        _ => char::from(b),
    }
}

/// INI sections in file order, each with its `key=value` pairs (trimmed).
/// Lines before the first section, comments (`;`, `#`) and lines without
/// `=` are skipped; CRLF, LF and CR line ends are all accepted.
fn parse_ini(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.split(['\r', '\n']) {
        let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}');
        if line.is_empty() || line.starts_with([';', '#']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push((name.trim().to_string(), Vec::new()));
        } else if let (Some((k, v)), Some(sec)) = (line.split_once('='), out.last_mut()) {
            sec.1.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVCHOST: &str = r"C:\WINDOWS\system32\svchost.exe";

    /// A .bup built from raw parts, for the malformed cases `write_bup`
    /// will not produce. Streams are XORed like McAfee's.
    fn raw_bup(streams: &[(&str, &[u8])]) -> Vec<u8> {
        let mut cf = cfb::CompoundFile::create(Cursor::new(Vec::new())).expect("create");
        for (name, data) in streams {
            let mut s = cf.create_stream(format!("/{name}")).expect("stream");
            s.write_all(&xor(data)).expect("write");
        }
        cf.flush().expect("flush");
        cf.into_inner().into_inner()
    }

    #[test]
    fn round_trip_write_read_extract() {
        let content = b"MZ\x90\x00 pretend PE".to_vec();
        let bytes = write_bup(SVCHOST, "W32/Wecorl.a", &content).expect("write");
        let bup = read_bup(&bytes).expect("read");
        assert_eq!(bup.detection.as_deref(), Some("W32/Wecorl.a"));
        assert_eq!(bup.entries.len(), 1);
        let e = &bup.entries[0];
        assert_eq!(e.original_name, SVCHOST);
        assert_eq!(e.stream, "File_0");
        assert_eq!(e.size, content.len() as u64);
        assert_eq!(extract(&bytes, e).expect("extract"), content);
        assert!(bup
            .details
            .iter()
            .any(|(k, v)| k == "CreationYear" && v == "2010"));
    }

    #[test]
    fn write_is_deterministic() {
        let a = write_bup(SVCHOST, "W32/Wecorl.a", b"abc").expect("a");
        let b = write_bup(SVCHOST, "W32/Wecorl.a", b"abc").expect("b");
        assert_eq!(a, b);
    }

    #[test]
    fn streams_on_disk_are_xor_6a() {
        let content: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let bytes = write_bup(SVCHOST, "W32/Wecorl.a", &content).expect("write");
        let mut cf = cfb::CompoundFile::open(Cursor::new(&bytes[..])).expect("cfb");
        let mut raw = Vec::new();
        cf.open_stream("/File_0")
            .expect("File_0")
            .read_to_end(&mut raw)
            .expect("read");
        let expected: Vec<u8> = content.iter().map(|b| b ^ 0x6A).collect();
        assert_eq!(raw, expected);
        let mut details = Vec::new();
        cf.open_stream("/Details")
            .expect("Details")
            .read_to_end(&mut details)
            .expect("read");
        // '[' ^ 0x6A = 0x31: the record is not stored in clear.
        assert_eq!(details[0], b'[' ^ 0x6A);
    }

    #[test]
    fn odd_case_names_and_keys() {
        let details = "\u{FEFF}[details]\r\ndetectionname = W32/Wecorl.a\r\n\r\n[file_0]\r\nORIGINALNAME=c:\\Windows\\SYSTEM32\\SvcHost.EXE\r\n";
        let bytes = raw_bup(&[("DETAILS", details.as_bytes()), ("file_0", b"xyz")]);
        let bup = read_bup(&bytes).expect("read");
        assert_eq!(bup.detection.as_deref(), Some("W32/Wecorl.a"));
        assert_eq!(
            bup.entries[0].original_name,
            r"c:\Windows\SYSTEM32\SvcHost.EXE"
        );
        assert_eq!(extract(&bytes, &bup.entries[0]).expect("extract"), b"xyz");
    }

    #[test]
    fn utf16_and_ansi_details() {
        let text = "[Details]\nDetectionName=W32/Wecorl.a\n[File_0]\nOriginalName=C:\\Dokumente\\Müller.exe\n";
        let mut utf16 = vec![0xFF, 0xFE];
        for u in text.encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        let bytes = raw_bup(&[("Details", &utf16), ("File_0", b"1")]);
        assert_eq!(
            read_bup(&bytes).expect("utf16").entries[0].original_name,
            "C:\\Dokumente\\Müller.exe"
        );
        // ANSI: 'ü' is 0xFC in Windows-1252, which is not valid UTF-8.
        let ansi: Vec<u8> = text
            .chars()
            .map(|c| if c == 'ü' { 0xFC } else { c as u8 })
            .collect();
        let bytes = raw_bup(&[("Details", &ansi), ("File_0", b"1")]);
        assert_eq!(
            read_bup(&bytes).expect("ansi").entries[0].original_name,
            "C:\\Dokumente\\Müller.exe"
        );
    }

    #[test]
    fn several_files() {
        let details = "[Details]\n[File_1]\nOriginalName=B\n[File_0]\nOriginalName=A\n";
        let bytes = raw_bup(&[
            ("Details", details.as_bytes()),
            ("File_0", b"a"),
            ("File_1", b"bb"),
        ]);
        let bup = read_bup(&bytes).expect("read");
        assert_eq!(bup.detection, None);
        let names: Vec<_> = bup
            .entries
            .iter()
            .map(|e| (e.original_name.as_str(), e.size))
            .collect();
        assert_eq!(names, [("A", 1), ("B", 2)]);
    }

    #[test]
    fn corrupt_cfb_is_a_clear_error() {
        let e = read_bup(b"this is not an OLE2 file at all, just text").unwrap_err();
        assert!(
            format!("{e:#}").contains("not an OLE2 compound file"),
            "{e:#}"
        );
        let mut bytes = write_bup(SVCHOST, "x", b"abc").expect("write");
        bytes.truncate(600);
        assert!(read_bup(&bytes).is_err());
        // Garbage after a valid OLE2 signature must not panic either.
        let mut sig = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
        sig.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
        assert!(read_bup(&sig).is_err());
    }

    #[test]
    fn missing_details_stream() {
        let bytes = raw_bup(&[("File_0", b"abc")]);
        let e = read_bup(&bytes).unwrap_err();
        assert!(format!("{e:#}").contains("no Details stream"), "{e:#}");
    }

    #[test]
    fn details_without_original_name() {
        let bytes = raw_bup(&[
            (
                "Details",
                b"[Details]\nDetectionName=x\n[File_0]\nObjectType=5\n",
            ),
            ("File_0", b"a"),
        ]);
        let e = read_bup(&bytes).unwrap_err();
        assert!(
            format!("{e:#}").contains("[File_0] has no OriginalName"),
            "{e:#}"
        );
    }

    #[test]
    fn details_without_any_file() {
        let bytes = raw_bup(&[("Details", b"[Details]\nDetectionName=x\n")]);
        let e = read_bup(&bytes).unwrap_err();
        assert!(format!("{e:#}").contains("no quarantined file"), "{e:#}");
    }

    #[test]
    fn declared_file_stream_missing() {
        let bytes = raw_bup(&[("Details", b"[Details]\n[File_0]\nOriginalName=C:\\x.exe\n")]);
        let e = read_bup(&bytes).unwrap_err();
        assert!(
            format!("{e:#}").contains("stream File_0 is missing"),
            "{e:#}"
        );
    }

    #[test]
    fn duplicate_file_section_is_ambiguous() {
        let bytes = raw_bup(&[
            (
                "Details",
                b"[File_0]\nOriginalName=A\n[file_0]\nOriginalName=B\n",
            ),
            ("File_0", b"a"),
        ]);
        let e = read_bup(&bytes).unwrap_err();
        assert!(format!("{e:#}").contains("appears twice"), "{e:#}");
    }

    #[test]
    fn extract_refuses_a_changed_size() {
        let bytes = write_bup(SVCHOST, "x", b"abcdef").expect("write");
        let mut e = read_bup(&bytes).expect("read").entries[0].clone();
        e.size = 3;
        assert!(extract(&bytes, &e).is_err());
        e.stream = "File_9".into();
        assert!(extract(&bytes, &e).is_err());
    }

    #[test]
    fn control_characters_are_refused_when_writing() {
        assert!(write_bup("C:\\x\r\n[File_1]", "x", b"").is_err());
        // Blanks around a value are trimmed on read: refused on write.
        assert!(write_bup("C:\\x\u{FEFF}", "x", b"").is_err());
        assert!(write_bup("C:\\x", " x", b"").is_err());
        assert!(write_bup("", "x", b"").is_err());
    }

    #[test]
    fn several_hundred_kb() {
        // Above the 4096-byte mini-stream cutoff ([MS-CFB] 2.2) and spanning
        // many FAT sectors.
        let content: Vec<u8> = (0..700_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let bytes = write_bup(SVCHOST, "W32/Wecorl.a", &content).expect("write");
        let bup = read_bup(&bytes).expect("read");
        assert_eq!(bup.entries[0].size, 700_000);
        assert_eq!(extract(&bytes, &bup.entries[0]).expect("extract"), content);
    }

    #[test]
    fn scan_finds_bups_in_every_known_folder() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        let a = root.join("QUARANTINE");
        let b = root.join(
            "Documents and Settings/All Users/Application Data/McAfee/VirusScan/Quarantine/sub",
        );
        let c = root.join("programdata/mcafee/virusscan/quarantine");
        for d in [&a, &b, &c] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let good = write_bup(SVCHOST, "W32/Wecorl.a", b"abc").expect("write");
        std::fs::write(a.join("1.bup"), &good).expect("w");
        std::fs::write(b.join("2.BUP"), &good).expect("w");
        std::fs::write(c.join("3.bup"), b"garbage").expect("w");
        std::fs::write(c.join("notes.txt"), b"ignored").expect("w");
        // Elsewhere on the volume: not a quarantine folder, not scanned.
        std::fs::write(root.join("4.bup"), &good).expect("w");
        let (ok, bad) = scan_quarantine(root);
        let names: Vec<_> = ok
            .iter()
            .map(|(p, _)| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .collect();
        assert_eq!(ok.len(), 2, "{names:?}");
        assert_eq!(bad.len(), 1);
        assert!(bad[0].0.ends_with("3.bup"));
        assert!(bad[0].1.contains("OLE2"), "{}", bad[0].1);
    }

    #[test]
    fn scan_of_a_volume_without_quarantine_is_empty() {
        let t = tempfile::tempdir().expect("tempdir");
        let (ok, bad) = scan_quarantine(t.path());
        assert!(ok.is_empty() && bad.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn scan_does_not_follow_symlinks() {
        let t = tempfile::tempdir().expect("tempdir");
        let q = t.path().join("Quarantine");
        std::fs::create_dir(&q).expect("mkdir");
        let outside = t.path().join("elsewhere.bup");
        std::fs::write(&outside, write_bup(SVCHOST, "x", b"a").expect("w")).expect("w");
        std::os::unix::fs::symlink(&outside, q.join("link.bup")).expect("symlink");
        let (ok, bad) = scan_quarantine(t.path());
        assert!(ok.is_empty());
        assert_eq!(bad.len(), 1);
        assert!(bad[0].1.contains("not followed"));
    }
}
