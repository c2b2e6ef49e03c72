//! Avast and AVG quarantine (the "chest"; AVG runs Avast's engine since
//! 2016): `chest\index.xml` lists the entries; an entry's bytes are either
//! the chest file named by its `ChestId`, XORed with a repeating key
//! ([`chest_key`]), or — for entries with an `IDPBlob` — a row of the
//! SQLite database `\$AV_ASW\$VAULT\vault.db` (AVG: `\$AV_AVG\…`), a file
//! XORed as a whole with another repeating key ([`vault_key`]).
//!
//! `index.xml` `<ChestEntry>` elements used: `ChestId`, `OrigFolder`,
//! `OrigFileName`, `Virus`, `TransferTime` (Unix seconds), `IDPBlob`
//! (presence only). Vault tables: `vault(id, type, filename, datetime,
//! userdata)`, `crossRef(vaultid, streamId, streamName, contextData)`,
//! `stream(streamId, size, hash, storageType, data, refCount)`, where
//! `hash` is the SHA-256 of `data` (seen in both samples).
//!
//! The two keys are byte strings from the Avast engine, published with
//! quarantine tools (maldump); they are data, not code. Facts from the
//! maldump samples and notes. The vault path is proven on two real vaults;
//! the chest-file path is not (both samples keep EICAR in the vault), so
//! [`chest_key`] is trusted on maldump's word until a real chest file is
//! seen. Avast 4/5 wrote chest files starting `-chest- ` (DeXRAY): that
//! older layout is not read. This is NOT a reader for pre-2016 AVG
//! "Virus Vault" (a different format), nor for vault streams stored
//! outside the database (`storageType` other than 1: no sample).

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

use super::sqlite::Db;
use super::util;
use super::xml;
use super::{check_vendor, QuarantineEntry, QuarantineReader, Scan, Unreadable, Vendor};

/// XOR key of chest files (5120 bytes, repeating).
pub fn chest_key() -> &'static [u8] {
    include_bytes!("keys/avast-chest.key")
}

/// XOR key of `vault.db` (16384 bytes, repeating).
pub fn vault_key() -> &'static [u8] {
    include_bytes!("keys/avast-vault.key")
}

/// `index.xml` is small; a huge one is not Avast's.
const MAX_INDEX: u64 = 64 << 20;

/// Chest folders, and the vault that belongs to each product.
const CHESTS: &[(&str, &str)] = &[
    (r"ProgramData\Avast Software\Avast\chest", r"$AV_ASW\$VAULT"),
    (r"ProgramData\AVG\Antivirus\chest", r"$AV_AVG\$VAULT"),
    (
        r"Documents and Settings\All Users\Application Data\Avast Software\Avast\chest",
        r"$AV_ASW\$VAULT",
    ),
    (
        r"Documents and Settings\All Users\Application Data\AVG\Antivirus\chest",
        r"$AV_AVG\$VAULT",
    ),
];
const LOCATIONS: &[&str] = &[
    r"ProgramData\Avast Software\Avast\chest",
    r"ProgramData\AVG\Antivirus\chest",
    r"Documents and Settings\All Users\Application Data\Avast Software\Avast\chest",
    r"Documents and Settings\All Users\Application Data\AVG\Antivirus\chest",
];

fn xor_with(data: &[u8], key: &[u8]) -> Vec<u8> {
    data.iter()
        .zip(key.iter().cycle())
        .map(|(b, k)| b ^ k)
        .collect()
}

/// A chest id names a file in the chest folder: digits and letters only.
fn safe_id(id: &str) -> Result<&str> {
    if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("chest id {id:?} is not a plain name");
    }
    Ok(id)
}

/// One `<ChestEntry>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChestEntry {
    pub chest_id: String,
    pub original_path: String,
    pub detection: Option<String>,
    pub transfer_time: Option<i64>,
    pub in_vault: bool,
}

/// Parses `index.xml`. Entries missing their id or name are errors.
pub fn parse_index(doc: &str) -> Vec<Result<ChestEntry>> {
    let blocks = xml::blocks(doc, "ChestEntry");
    let opened = doc.matches("<ChestEntry>").count();
    // A truncated index must not silently lose its last entries.
    let unclosed = (opened > blocks.len()).then(|| {
        Err(anyhow!(
            "{} ChestEntry element(s) not closed: index.xml is truncated or damaged",
            opened - blocks.len()
        ))
    });
    blocks
        .into_iter()
        .map(|b| {
            let id =
                xml::text(b, "ChestId").ok_or_else(|| anyhow!("a ChestEntry has no ChestId"))?;
            safe_id(&id)?;
            let name = xml::text(b, "OrigFileName")
                .filter(|n| !n.is_empty())
                .ok_or_else(|| anyhow!("chest entry {id} has no OrigFileName"))?;
            let folder = xml::text(b, "OrigFolder").unwrap_or_default();
            let original_path = if folder.is_empty() {
                name
            } else {
                format!("{}\\{name}", folder.trim_end_matches('\\'))
            };
            Ok(ChestEntry {
                original_path,
                detection: xml::text(b, "Virus").filter(|v| !v.is_empty()),
                transfer_time: xml::text(b, "TransferTime").and_then(|t| t.parse().ok()),
                in_vault: b.contains("<IDPBlob>"),
                chest_id: id,
            })
        })
        .chain(unclosed)
        .collect()
}

/// A vault stream: what the vault holds for one original path.
struct VaultItem {
    stream_id: i64,
    sha256: Option<String>,
    data: Vec<u8>,
}

/// The vault's streams keyed by the original path (lower-cased).
fn read_vault(raw: &[u8]) -> Result<Vec<(String, VaultItem)>> {
    let plain = xor_with(raw, vault_key());
    let db = Db::open(&plain).context("vault.db (after removing the XOR layer)")?;
    let vault = db.table("vault")?;
    let cross = db.table("crossRef")?;
    let streams = db.table("stream")?;
    let mut out = Vec::new();
    for v in &vault {
        let Some(name) = v.col(2).text() else {
            continue;
        };
        let vid = v.id_or_rowid(0);
        for x in cross.iter().filter(|x| x.col(0).int() == Some(vid)) {
            let Some(sid) = x.col(1).int() else { continue };
            let Some(s) = streams.iter().find(|s| s.id_or_rowid(0) == sid) else {
                bail!("crossRef names stream {sid}, which is missing");
            };
            if s.col(3).int() != Some(1) {
                bail!(
                    "stream {sid} is stored outside the database (storageType {:?})",
                    s.col(3)
                );
            }
            let data = s.col(4).blob().map(<[u8]>::to_vec).unwrap_or_default();
            out.push((
                name.to_lowercase(),
                VaultItem {
                    stream_id: sid,
                    sha256: s.col(2).blob().filter(|h| h.len() == 32).map(util::hex),
                    data,
                },
            ));
        }
    }
    Ok(out)
}

/// The Avast/AVG reader.
pub struct Avast;

fn scan_chest(root: &Path, chest: &Path, vault_dir: &str, scan: &mut Scan) -> Result<()> {
    let v = Vendor::Avast;
    let index_path = util::files_in(
        v,
        root,
        chest,
        |n| n.eq_ignore_ascii_case("index.xml"),
        &mut scan.unreadable,
    )
    .into_iter()
    .next();
    let Some(index_path) = index_path else {
        // Chest files without an index: bytes without a path.
        for f in util::files_in(v, root, chest, |_| true, &mut scan.unreadable) {
            scan.unreadable.push(Unreadable::new(
                v,
                root,
                &f,
                "chest has no index.xml: original path unknown".into(),
            ));
        }
        return Ok(());
    };
    let raw = util::read_capped(&index_path, MAX_INDEX)?;
    let doc = String::from_utf8_lossy(&raw);
    let vault_file: Option<PathBuf> = util::resolve(root, vault_dir)
        .into_iter()
        .flat_map(|d| {
            util::files_in(
                v,
                root,
                &d,
                |n| n.eq_ignore_ascii_case("vault.db"),
                &mut Vec::new(),
            )
        })
        .next();
    let mut vault: Option<Result<Vec<(String, VaultItem)>>> = None;
    for item in parse_index(&doc) {
        let e = match item {
            Ok(e) => e,
            Err(e) => {
                scan.unreadable
                    .push(Unreadable::new(v, root, &index_path, format!("{e:#}")));
                continue;
            }
        };
        let chest_file = chest.join(&e.chest_id);
        let base = QuarantineEntry {
            vendor: v,
            original_path: e.original_path.clone(),
            detection: e.detection.clone(),
            quarantined_at: e.transfer_time.and_then(util::unix_rfc3339),
            sha256: None,
            size: None,
            record: util::rel(root, &chest_file),
            metadata: Some(util::rel(root, &index_path)),
            locator: format!("chest:{}", e.chest_id),
        };
        if std::fs::symlink_metadata(&chest_file)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            let size = std::fs::metadata(&chest_file).map(|m| m.len()).ok();
            scan.entries.push(QuarantineEntry { size, ..base });
            continue;
        }
        if !e.in_vault {
            scan.unreadable.push(Unreadable::new(
                v,
                root,
                &chest_file,
                format!(
                    "chest entry {} ({}): its chest file is missing",
                    e.chest_id, e.original_path
                ),
            ));
            continue;
        }
        let Some(vf) = &vault_file else {
            scan.unreadable.push(Unreadable::new(
                v,
                root,
                &index_path,
                format!(
                    "chest entry {} is in the vault, but there is no {vault_dir}\\vault.db",
                    e.chest_id
                ),
            ));
            continue;
        };
        let items = vault.get_or_insert_with(|| {
            util::read_record(vf).and_then(|raw| util::guarded(|| read_vault(&raw)))
        });
        let items = match items {
            Ok(i) => i,
            Err(err) => {
                scan.unreadable
                    .push(Unreadable::new(v, root, vf, format!("{err:#}")));
                continue;
            }
        };
        let key = e.original_path.to_lowercase();
        match items.iter().find(|(n, _)| *n == key) {
            Some((_, it)) => scan.entries.push(QuarantineEntry {
                sha256: it.sha256.clone(),
                size: Some(it.data.len() as u64),
                record: util::rel(root, vf),
                locator: format!("vault:{}", it.stream_id),
                ..base
            }),
            None => scan.unreadable.push(Unreadable::new(
                v,
                root,
                vf,
                format!(
                    "the vault holds nothing for chest entry {} ({})",
                    e.chest_id, e.original_path
                ),
            )),
        }
    }
    Ok(())
}

impl QuarantineReader for Avast {
    fn vendor(&self) -> Vendor {
        Vendor::Avast
    }
    fn locations(&self) -> &'static [&'static str] {
        LOCATIONS
    }
    fn scan(&self, root: &Path) -> Scan {
        let mut scan = Scan::default();
        for (chest_pat, vault_dir) in CHESTS {
            for chest in util::resolve(root, chest_pat) {
                if let Err(e) = scan_chest(root, &chest, vault_dir, &mut scan) {
                    scan.unreadable.push(Unreadable::new(
                        Vendor::Avast,
                        root,
                        &chest,
                        format!("{e:#}"),
                    ));
                }
            }
        }
        scan
    }
    fn extract(&self, root: &Path, entry: &QuarantineEntry) -> Result<Vec<u8>> {
        check_vendor(Vendor::Avast, entry)?;
        let raw = util::read_record(&util::under(root, &entry.record)?)
            .with_context(|| format!("reading {}", entry.record.display()))?;
        let bytes = if entry.locator.starts_with("chest:") {
            xor_with(&raw, chest_key())
        } else if let Some(sid) = entry.locator.strip_prefix("vault:") {
            let sid: i64 = sid
                .parse()
                .map_err(|_| anyhow!("bad vault locator {sid:?}"))?;
            let items = util::guarded(|| read_vault(&raw))?;
            items
                .into_iter()
                .find(|(n, it)| it.stream_id == sid && *n == entry.original_path.to_lowercase())
                .map(|(_, it)| it.data)
                .ok_or_else(|| {
                    anyhow!(
                        "the vault no longer holds stream {sid} for {}",
                        entry.original_path
                    )
                })?
        } else {
            bail!("bad Avast locator {:?}", entry.locator);
        };
        util::verify(entry, &bytes)?;
        Ok(bytes)
    }
}

/// What [`write_chest`] makes: `index.xml` and the chest files, each
/// `(chest id = file name, bytes)`, all to go in the `chest` folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenChest {
    pub index_xml: String,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Test support: the chest file and `index.xml` for quarantined files
/// stored as chest files (not in the vault), laid out like Avast's.
/// `items` are `(chest id, original path, detection, bytes)`; `time` is
/// the Unix time written as FileTime and TransferTime.
pub fn write_chest(items: &[(&str, &str, &str, &[u8])], time: i64) -> Result<WrittenChest> {
    let mut doc = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<aswObject>\n");
    let mut next = 1u32;
    let mut files = Vec::new();
    for (id, path, det, bytes) in items {
        safe_id(id)?;
        let (folder, name) = path
            .rsplit_once('\\')
            .ok_or_else(|| anyhow!("{path:?} is not a Windows path"))?;
        if let Ok(n) = u32::from_str_radix(id, 16) {
            next = next.max(n.saturating_add(1));
        }
        doc.push_str(&format!(
            "\t<ChestEntry>\n\t\t<ChestId>{id}</ChestId>\n\t\t<FileTime>{time}</FileTime>\n\t\t<OrigFileName>{}</OrigFileName>\n\t\t<OrigFolder>{}</OrigFolder>\n\t\t<Comment></Comment>\n\t\t<Virus>{}</Virus>\n\t\t<Category>Vir</Category>\n\t\t<Restore>yes</Restore>\n\t\t<TransferTime>{time}</TransferTime>\n\t\t<FileSize>{}</FileSize>\n\t</ChestEntry>\n",
            xml::escape(name),
            xml::escape(folder),
            xml::escape(det),
            bytes.len()
        ));
        files.push((id.to_string(), xor_with(bytes, chest_key())));
    }
    doc.push_str("</aswObject>\n");
    let doc = doc.replacen(
        "<aswObject>\n",
        &format!("<aswObject>\n\t<NewId>{next:08X}</NewId>\n"),
        1,
    );
    Ok(WrittenChest {
        index_xml: doc,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER32: &str = r"C:\WINDOWS\system32\user32.dll";

    #[test]
    fn chest_round_trip_on_an_xp_layout() {
        let t = tempfile::tempdir().expect("tempdir");
        let chest = t
            .path()
            .join("Documents and Settings/All Users/Application Data/AVG/Antivirus/chest");
        std::fs::create_dir_all(&chest).expect("mkdir");
        let content: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let WrittenChest {
            index_xml: index,
            files,
        } = write_chest(
            &[
                ("00000001", USER32, "Win32:Malware-gen", &content),
                ("00000002", r"C:\gone.exe", "x", b""),
            ],
            1_272_000_000,
        )
        .expect("write");
        std::fs::write(chest.join("index.xml"), index).expect("w");
        std::fs::write(chest.join(&files[0].0), &files[0].1).expect("w");
        let s = Avast.scan(t.path());
        assert_eq!(s.entries.len(), 1, "{s:?}");
        assert_eq!(s.unreadable.len(), 1);
        assert!(s.unreadable[0].reason.contains("chest file is missing"));
        let e = &s.entries[0];
        assert_eq!(e.original_path, USER32);
        assert_eq!(e.detection.as_deref(), Some("Win32:Malware-gen"));
        assert_eq!(e.quarantined_at.as_deref(), Some("2010-04-23T05:20:00Z"));
        assert_eq!(Avast.extract(t.path(), e).expect("extract"), content);
        // The key repeats: bytes past 5120 are XORed from its start again.
        assert_eq!(files[0].1[5120] ^ chest_key()[0], content[5120]);
    }

    /// A vault made by SQLite (see `sqlite.rs` tests) with big streams in
    /// overflow chains, XORed like Avast's, behind an AVG chest index.
    #[test]
    fn vault_entries_with_overflow_chains() {
        let t = tempfile::tempdir().expect("tempdir");
        let chest = t.path().join("ProgramData/AVG/Antivirus/chest");
        let vault = t.path().join("$AV_AVG/$VAULT");
        std::fs::create_dir_all(&chest).expect("mkdir");
        std::fs::create_dir_all(&vault).expect("mkdir");
        let plain = include_bytes!("testdata/vault-overflow.db");
        std::fs::write(vault.join("vault.db"), xor_with(plain, vault_key())).expect("w");
        let mut index = String::from("<aswObject>");
        for (id, name) in [
            ("1", "user32.dll"),
            ("2", "small.dll"),
            ("3", "mid.dll"),
            ("4", "absent.dll"),
        ] {
            index.push_str(&format!(
                "<ChestEntry><ChestId>{id}</ChestId><OrigFileName>{name}</OrigFileName><OrigFolder>C:\\WINDOWS\\system32</OrigFolder><Virus>x</Virus><IDPBlob>00</IDPBlob></ChestEntry>"
            ));
        }
        index.push_str("</aswObject>");
        std::fs::write(chest.join("index.xml"), index).expect("w");
        let s = Avast.scan(t.path());
        assert_eq!(s.entries.len(), 3, "{s:?}");
        assert_eq!(s.unreadable.len(), 1);
        assert!(s.unreadable[0]
            .reason
            .contains("holds nothing for chest entry 4"));
        let e = s
            .entries
            .iter()
            .find(|e| e.original_path.ends_with("user32.dll"))
            .expect("user32");
        let want: Vec<u8> = (0..20000).map(|i| ((i * 31 + 7) % 251) as u8).collect();
        assert_eq!(e.sha256.as_deref(), Some(util::sha256_hex(&want).as_str()));
        assert_eq!(Avast.extract(t.path(), e).expect("extract"), want);
        // A vault whose user32 stream changed after the scan is refused.
        let mut other = plain.to_vec();
        let at = other
            .windows(4)
            .position(|w| w == [7, 38, 69, 100])
            .expect("data");
        other[at] ^= 1;
        std::fs::write(vault.join("vault.db"), xor_with(&other, vault_key())).expect("w");
        let err = Avast.extract(t.path(), e).unwrap_err();
        assert!(format!("{err:#}").contains("sha256"), "{err:#}");
    }

    #[test]
    fn hostile_index_entries_are_refused() {
        let doc = "<aswObject><ChestEntry><ChestId>../../x</ChestId><OrigFileName>a</OrigFileName></ChestEntry><ChestEntry><ChestId>1</ChestId></ChestEntry></aswObject>";
        let r = parse_index(doc);
        assert!(format!("{:#}", r[0].as_ref().unwrap_err()).contains("not a plain name"));
        assert!(format!("{:#}", r[1].as_ref().unwrap_err()).contains("no OrigFileName"));
        assert!(read_vault(b"not a vault").is_err());
    }
}
