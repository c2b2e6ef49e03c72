//! McAfee Endpoint Security (ENS) quarantine: one `<guid>.zip` per
//! detection in `VirusScan\Quarantine\quarantine`, encrypted with the
//! legacy ZipCrypto password `infected`. Inside: the original file(s),
//! stored under their path without the drive (`Users/…/eicar.com`), and a
//! QuarMeta XML record `ProgramData/McAfee/QuarMeta/<guid>` with
//! `detectionName`, `creationTime` (`YYYY-MM-DD hh:mm:ss`, local time) and
//! one `<File>` per file: `originalPath`, `size`. (The sample holds the
//! QuarMeta twice; any copy that parses is used.)
//!
//! From the maldump sample (ENS, 2023) and its McAfee notes. This is NOT
//! the VSE `.bup` format ([`super::mcafee_vse`]), and registry items in
//! the record are not entries.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Cursor as IoCursor, Read, Write};
use std::path::Path;

use super::util;
use super::xml;
use super::{
    check_vendor, QuarantineEntry, QuarantineReader, Scan, Unreadable, Vendor, MAX_RECORD,
};

/// The ZipCrypto password of every ENS quarantine zip.
pub const PASSWORD: &[u8] = b"infected";
/// A QuarMeta record is a few KiB.
const MAX_META: u64 = 1 << 20;
/// Zips with more members than this are not McAfee's.
const MAX_MEMBERS: usize = 4096;

const LOCATIONS: &[&str] = &[r"ProgramData\McAfee\VirusScan\Quarantine\quarantine"];

/// What the QuarMeta says of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsFile {
    pub original_path: String,
    pub size: Option<u64>,
}

/// A parsed ENS quarantine zip (metadata only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsRecord {
    pub detection: Option<String>,
    pub creation_time: Option<String>,
    pub files: Vec<EnsFile>,
}

/// The zip member name ENS stores `original_path` under.
fn member_name(original_path: &str) -> String {
    let p = original_path.replace('\\', "/");
    let p = match p.as_bytes() {
        [d, b':', b'/', ..] if d.is_ascii_alphabetic() => p[3..].to_string(),
        _ => p.trim_start_matches('/').to_string(),
    };
    p
}

fn is_meta(name: &str) -> bool {
    name.to_ascii_lowercase().contains("quarmeta/")
}

fn read_member(
    zip: &mut zip::ZipArchive<IoCursor<&[u8]>>,
    i: usize,
    cap: u64,
) -> Result<(String, Vec<u8>)> {
    let f = zip
        .by_index_decrypt(i, PASSWORD)
        .map_err(|e| anyhow!("member {i}: {e} (not McAfee's password?)"))?;
    let name = f
        .name()
        .map(|n| n.into_owned())
        .unwrap_or_else(|_| format!("#{i}"));
    if f.size() > cap {
        return Err(super::RecordError::TooLarge {
            what: format!("member {name}"),
            size: f.size(),
            cap,
        }
        .into());
    }
    let mut buf = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("member {name}"))?;
    if buf.len() as u64 > cap {
        bail!("member {name} is larger than declared");
    }
    Ok((name, buf))
}

fn open(raw: &[u8]) -> Result<zip::ZipArchive<IoCursor<&[u8]>>> {
    let z = zip::ZipArchive::new(IoCursor::new(raw)).map_err(|e| anyhow!("not a zip: {e}"))?;
    if z.len() > MAX_MEMBERS {
        bail!("{} members", z.len());
    }
    Ok(z)
}

/// Parses the QuarMeta of an ENS zip.
pub fn parse(raw: &[u8]) -> Result<EnsRecord> {
    let mut z = open(raw)?;
    let mut last_err = anyhow!("no QuarMeta record in the zip");
    for i in 0..z.len() {
        let is_m = z
            .name_for_index(i)
            .is_some_and(|n| n.is_ok_and(|n| is_meta(&n)));
        if !is_m {
            continue;
        }
        match read_member(&mut z, i, MAX_META)
            .and_then(|(_, b)| parse_meta(&String::from_utf8_lossy(&b)))
        {
            Ok(r) => return Ok(r),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

fn parse_meta(doc: &str) -> Result<EnsRecord> {
    if !doc.contains("<QuarantineObject") {
        bail!("QuarMeta is not a QuarantineObject record");
    }
    let files: Vec<EnsFile> = xml::blocks(doc, "File")
        .into_iter()
        .filter_map(|b| {
            Some(EnsFile {
                original_path: xml::text(b, "originalPath").filter(|p| !p.is_empty())?,
                size: xml::text(b, "size").and_then(|s| s.parse().ok()),
            })
        })
        .collect();
    if files.is_empty() {
        bail!("QuarMeta lists no file with an originalPath");
    }
    let creation_time = xml::text(doc, "creationTime").and_then(|t| {
        let n: Vec<u32> = t
            .split(['-', ' ', ':'])
            .filter_map(|x| x.parse().ok())
            .collect();
        match n[..] {
            [y, mo, d, h, mi, s] => util::local_rfc3339(y, mo, d, h, mi, s),
            _ => None,
        }
    });
    Ok(EnsRecord {
        detection: xml::text(doc, "detectionName").filter(|d| !d.is_empty()),
        creation_time,
        files,
    })
}

/// The bytes of `original_path` from an ENS zip.
pub fn extract_file(raw: &[u8], original_path: &str) -> Result<Vec<u8>> {
    let mut z = open(raw)?;
    let want = member_name(original_path);
    for i in 0..z.len() {
        if z.name_for_index(i)
            .is_some_and(|n| n.is_ok_and(|n| n.eq_ignore_ascii_case(&want)))
        {
            return read_member(&mut z, i, MAX_RECORD).map(|(_, b)| b);
        }
    }
    bail!("the zip has no member {want}")
}

/// Test support: an ENS quarantine zip for one file, named `guid`.
pub fn write(guid: &str, original_path: &str, detection: &str, content: &[u8]) -> Result<Vec<u8>> {
    let meta = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\" ?>\r\n<QuarantineObject name=\"{g}\">\r\n  <creationTime>2023-07-19 04:39:10</creationTime>\r\n  <detectionName>{d}</detectionName>\r\n  <Files>\r\n    <File>\r\n    <itemIndex>0</itemIndex>\r\n    <originalPath>{p}</originalPath>\r\n    <size>{n}</size>\r\n    </File>\r\n  </Files>\r\n</QuarantineObject>\r\n",
        g = xml::escape(guid),
        d = xml::escape(detection),
        p = xml::escape(original_path),
        n = content.len()
    );
    let mut w = zip::ZipWriter::new(IoCursor::new(Vec::new()));
    // ZipCrypto writing is behind zip's `unstable` module; this is test
    // support only, so an API change there breaks fixtures, not rescues.
    use zip::unstable::write::FileOptionsExt;
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .with_deprecated_encryption(PASSWORD)
        .context("zip options")?;
    w.start_file(member_name(original_path), opts)
        .context("zip member")?;
    w.write_all(content).context("zip member")?;
    w.start_file(format!("ProgramData/McAfee/QuarMeta/{guid}"), opts)
        .context("zip member")?;
    w.write_all(meta.as_bytes()).context("zip member")?;
    Ok(w.finish().context("finishing the zip")?.into_inner())
}

/// The McAfee ENS reader.
pub struct McafeeEns;

impl QuarantineReader for McafeeEns {
    fn vendor(&self) -> Vendor {
        Vendor::McafeeEns
    }
    fn locations(&self) -> &'static [&'static str] {
        LOCATIONS
    }
    fn scan(&self, root: &Path) -> Scan {
        let v = Vendor::McafeeEns;
        let mut scan = Scan::default();
        for dir in util::resolve_all(root, LOCATIONS) {
            for f in util::files_in(
                v,
                root,
                &dir,
                |n| util::has_ext(n, "zip"),
                &mut scan.unreadable,
            ) {
                match util::read_record(&f).and_then(|raw| util::guarded(|| parse(&raw))) {
                    Ok(r) => {
                        for file in r.files {
                            scan.entries.push(QuarantineEntry {
                                vendor: v,
                                original_path: file.original_path.clone(),
                                detection: r.detection.clone(),
                                quarantined_at: r.creation_time.clone(),
                                sha256: None,
                                size: file.size,
                                record: util::rel(root, &f),
                                metadata: None,
                                locator: member_name(&file.original_path),
                            });
                        }
                    }
                    Err(e) => scan
                        .unreadable
                        .push(Unreadable::new(v, root, &f, format!("{e:#}"))),
                }
            }
        }
        scan
    }
    fn extract(&self, root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>> {
        check_vendor(Vendor::McafeeEns, entry)?;
        let raw = util::read_record(&util::under(root, &entry.record)?)
            .with_context(|| format!("reading {}", entry.record.display()))?;
        let bytes = util::guarded(|| extract_file(&raw, &entry.original_path))
            .with_context(|| entry.record.display().to_string())?;
        util::verify(entry, &bytes)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        let path = r"C:\Windows\System32\user32.dll";
        let z = write(
            "fbeecd71-0000-0000-0000-000000000000",
            path,
            "Generic.abc",
            b"MZ user32",
        )
        .expect("write");
        let r = parse(&z).expect("parse");
        assert_eq!(r.detection.as_deref(), Some("Generic.abc"));
        assert_eq!(
            r.files,
            vec![EnsFile {
                original_path: path.into(),
                size: Some(9)
            }]
        );
        assert_eq!(
            r.creation_time.as_deref(),
            Some("2023-07-19T04:39:10-00:00")
        );
        assert_eq!(extract_file(&z, path).expect("extract"), b"MZ user32");
        assert!(extract_file(&z, r"C:\other.dll").is_err());
        assert!(parse(&z[..z.len() / 2]).is_err());
        assert!(parse(b"PK\x03\x04 not really").is_err());
        // A plain (unencrypted) zip is not McAfee's.
        let mut w = zip::ZipWriter::new(IoCursor::new(Vec::new()));
        w.start_file(
            "ProgramData/McAfee/QuarMeta/x",
            zip::write::SimpleFileOptions::default(),
        )
        .expect("start");
        w.write_all(b"<QuarantineObject></QuarantineObject>")
            .expect("w");
        let plain = w.finish().expect("finish").into_inner();
        assert!(parse(&plain).is_err());
    }
}
