//! `defib store sync STICK|IMAGE --store DIR`: brings the store on a defib
//! stick (mounted folder) or image file (or the stick's block device) up
//! to date from a store folder, without rebuilding the image; and the
//! stick's store as `defib inspect` shows it.
//!
//! Order is what keeps an interrupted sync harmless: every object the new
//! index names is copied under a temp name, renamed into
//! `defib/store/objects/`, and read back and verified first; only then is
//! `defib/store/index.json` replaced (temp name, then rename). Until that
//! rename the old index, whose objects are all still there, is in force;
//! FAT has no atomic replace, so between removing the old index and the
//! rename there is a moment without one, in which the rescue uses the index
//! built into the image. Objects are never deleted: the image's own index
//! may still name them.

use crate::image::{with_esp, EspOps, UsbImage};
use anyhow::{bail, Context, Result};
use defib_rescue::layout::{MANIFEST, MEDIUM_STORE_DIR};
use defib_rescue::store::{sha256_hex, Entry, Index, Store, INDEX_FILE, OBJECTS_DIR};
use serde::Serialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What a medium must offer a sync. Paths are `/`-separated from its root.
pub trait Medium {
    /// Up to `cap` bytes of a file; `Ok(None)` if there is none.
    fn read_capped(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>>;
    /// Temp name, then rename over the old file; a failure leaves the old.
    fn replace(&self, path: &str, data: &mut dyn Read) -> Result<()>;
    /// Free bytes and the allocation unit, when known.
    fn space(&self) -> Result<Option<(u64, u64)>>;
}

impl Medium for &dyn EspOps {
    fn read_capped(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        EspOps::read_capped(*self, path, cap)
    }
    fn replace(&self, path: &str, data: &mut dyn Read) -> Result<()> {
        EspOps::replace(*self, path, data)
    }
    fn space(&self) -> Result<Option<(u64, u64)>> {
        Ok(Some((self.free_bytes()?, self.cluster_size())))
    }
}

/// A mounted stick: its root folder.
pub struct DirMedium(pub PathBuf);

impl Medium for DirMedium {
    fn read_capped(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let p = self.0.join(path);
        match std::fs::File::open(&p) {
            Ok(f) => {
                let mut d = Vec::new();
                f.take(cap)
                    .read_to_end(&mut d)
                    .with_context(|| format!("reading {}", p.display()))?;
                Ok(Some(d))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening {}", p.display())),
        }
    }

    fn replace(&self, path: &str, data: &mut dyn Read) -> Result<()> {
        let p = self.0.join(path);
        let dir = p.parent().context("medium path")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = p.file_name().context("medium path")?.to_string_lossy();
        let tmp = dir.join(format!(".{name}.defib-tmp"));
        let res = (|| -> Result<()> {
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            std::io::copy(data, &mut f).with_context(|| format!("writing {}", tmp.display()))?;
            f.flush()?;
            f.sync_all()
                .with_context(|| format!("syncing {}", tmp.display()))?;
            std::fs::rename(&tmp, &p)
                .with_context(|| format!("renaming {} to {}", tmp.display(), p.display()))?;
            // vfat honours a directory fsync; it makes the rename durable.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing {}", dir.display()))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    fn space(&self) -> Result<Option<(u64, u64)>> {
        Ok(None)
    }
}

/// Where a sync can be told to stop, as a cut cable would (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After every object is in place, before the index is replaced.
    BeforeIndex,
}

/// What a sync did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncSummary {
    pub target: PathBuf,
    pub entries: usize,
    pub objects: usize,
    pub objects_copied: usize,
    pub objects_present: usize,
    /// A copy on the medium that was corrupt and replaced.
    pub objects_repaired: usize,
    pub bytes_copied: u64,
    pub index_sha256: String,
    /// False when the medium already had this exact index.
    pub index_replaced: bool,
}

fn index_path() -> String {
    format!("{MEDIUM_STORE_DIR}/{INDEX_FILE}")
}

fn object_path(sha: &str) -> String {
    format!("{MEDIUM_STORE_DIR}/{OBJECTS_DIR}/{sha}")
}

/// Syncs `store_dir` onto `m`. The store folder must verify (nothing is
/// written otherwise), and the medium must have room for the missing
/// objects when it can say how much it has.
pub fn sync_medium(m: &dyn Medium, store_dir: &Path, stop: Option<Stop>) -> Result<SyncSummary> {
    let src = Store::open(store_dir)?;
    let index_bytes = std::fs::read(store_dir.join(INDEX_FILE)).with_context(|| {
        format!(
            "{}: no {INDEX_FILE}; give --store the folder `defib store import` writes",
            store_dir.display()
        )
    })?;
    let v = src.verify()?;
    if !v.problems.is_empty() {
        bail!(
            "the store in {} does not verify ({}); nothing was written. Run `defib store verify --store {}`",
            store_dir.display(),
            v.problems.join("; "),
            store_dir.display()
        );
    }
    let mut objects: Vec<&Entry> = Vec::new();
    for e in &src.index.entries {
        if !objects.iter().any(|o| o.sha256 == e.sha256) {
            objects.push(e);
        }
    }
    objects.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    let mut s = SyncSummary {
        entries: src.index.entries.len(),
        objects: objects.len(),
        index_sha256: sha256_hex(&index_bytes),
        ..Default::default()
    };
    // What the medium lacks, or holds corrupt.
    let mut todo = Vec::new();
    for e in &objects {
        match m.read_capped(&object_path(&e.sha256), e.size + 1)? {
            Some(d) if d.len() as u64 == e.size && sha256_hex(&d) == e.sha256 => {
                s.objects_present += 1
            }
            Some(_) => todo.push((*e, true)),
            None => todo.push((*e, false)),
        }
    }
    if let Some((free, unit)) = m.space()? {
        let round = |n: u64| n.div_ceil(unit.max(1)) * unit.max(1);
        // A replaced file is written beside the old one before it goes.
        let need: u64 = todo.iter().map(|(e, _)| round(e.size)).sum::<u64>()
            + round(index_bytes.len() as u64)
            + 64 * unit;
        if need > free {
            bail!(
                "the medium has {} MiB free, the store's missing objects need {} MiB; nothing was written. \
                 Rebuild the image with `defib build` (it sizes the partition for the store)",
                free >> 20,
                need.div_ceil(1 << 20)
            );
        }
    }
    for (e, was_bad) in &todo {
        let from = src.object_path(&e.sha256);
        let mut f =
            std::fs::File::open(&from).with_context(|| format!("opening {}", from.display()))?;
        let to = object_path(&e.sha256);
        m.replace(&to, &mut f)
            .with_context(|| format!("copying {} to {to}", from.display()))?;
        let back = m.read_capped(&to, e.size + 1)?.unwrap_or_default();
        if back.len() as u64 != e.size || sha256_hex(&back) != e.sha256 {
            bail!(
                "{to} reads back wrong after copying ({} bytes); the medium may be failing. \
                 The old index is still in force",
                back.len()
            );
        }
        s.objects_copied += 1;
        s.objects_repaired += usize::from(*was_bad);
        s.bytes_copied += e.size;
    }
    if stop == Some(Stop::BeforeIndex) {
        bail!("sync stopped before the index (fault injection)");
    }
    let current = m.read_capped(&index_path(), index_bytes.len() as u64 + 1)?;
    if current.as_deref() != Some(&index_bytes[..]) {
        m.replace(&index_path(), &mut &index_bytes[..])?;
        let back = m.read_capped(&index_path(), index_bytes.len() as u64 + 1)?;
        if back.as_deref() != Some(&index_bytes[..]) {
            bail!(
                "{} reads back wrong after writing; the medium may be failing",
                index_path()
            );
        }
        s.index_replaced = true;
    }
    Ok(s)
}

/// The SOURCE_DATE_EPOCH the image was built with (its manifest says), so
/// files a sync writes carry the same stamps as the rest.
fn image_epoch(img: &UsbImage) -> u64 {
    img.read_file(MANIFEST)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["source_date_epoch"].as_u64())
        .unwrap_or(0)
}

/// `defib store sync TARGET --store DIR`: a folder is a mounted stick,
/// anything else an image file or the stick's block device.
pub fn sync(target: &Path, store_dir: &Path, stop: Option<Stop>) -> Result<SyncSummary> {
    let mut s = if target.is_dir() {
        if !target.join(MANIFEST).is_file() {
            bail!(
                "{}: no {MANIFEST}; give the folder a defib stick is mounted on, or the image file",
                target.display()
            );
        }
        sync_medium(&DirMedium(target.to_path_buf()), store_dir, stop)?
    } else {
        let img = UsbImage::open(target)?;
        img.read_file(MANIFEST).with_context(|| {
            format!(
                "{}: no \\defib\\manifest.json — is this a defib image?",
                target.display()
            )
        })?;
        let epoch = image_epoch(&img);
        with_esp(target, epoch, |esp| sync_medium(&esp, store_dir, stop))?
    };
    s.target = target.to_path_buf();
    Ok(s)
}

/// The store on a stick or image, for `defib inspect`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediumStore {
    /// No `\defib\store\index.json` on the medium.
    pub absent: bool,
    pub entries: usize,
    pub objects: usize,
    pub bytes: u64,
    pub index_sha256: Option<String>,
    /// Objects present with the right size and SHA-256; filled only when
    /// asked to verify (it reads every object).
    pub verified: Option<usize>,
    /// What is wrong: a malformed index, missing or corrupt objects.
    pub problems: Vec<String>,
}

/// Reads the store of an image or device: the index, and with `verify`
/// every object it names.
pub fn medium_store(img: &UsbImage, verify: bool) -> MediumStore {
    medium_store_with(&|p: &str| img.read_file(p), verify)
}

/// [`medium_store`] for any medium that can read a file by its path
/// (`defib/store/index.json`): the USB image's FAT, or an ISO's tree.
pub fn medium_store_with(read: &dyn Fn(&str) -> Result<Vec<u8>>, verify: bool) -> MediumStore {
    let mut r = MediumStore::default();
    let raw = match read(&index_path()) {
        Ok(b) => b,
        Err(_) => {
            r.absent = true;
            return r;
        }
    };
    r.index_sha256 = Some(sha256_hex(&raw));
    let idx = match std::str::from_utf8(&raw)
        .map_err(anyhow::Error::from)
        .and_then(|t| Index::parse(t, &format!("\\{}", index_path().replace('/', "\\"))))
    {
        Ok(i) => i,
        Err(e) => {
            r.problems.push(format!("{e:#}"));
            return r;
        }
    };
    r.entries = idx.entries.len();
    let mut shas: Vec<(&str, u64)> = idx
        .entries
        .iter()
        .map(|e| (e.sha256.as_str(), e.size))
        .collect();
    shas.sort_unstable();
    shas.dedup_by_key(|x| x.0);
    r.objects = shas.len();
    r.bytes = shas.iter().map(|x| x.1).sum();
    if verify {
        let mut ok = 0;
        for (sha, size) in &shas {
            match read(&object_path(sha)) {
                Ok(d) if d.len() as u64 == *size && sha256_hex(&d) == *sha => ok += 1,
                Ok(d) => r.problems.push(format!(
                    "{} is corrupt ({} bytes, the index says {size}); run `defib store sync`",
                    object_path(sha),
                    d.len()
                )),
                Err(_) => r.problems.push(format!(
                    "{} is missing; run `defib store sync`",
                    object_path(sha)
                )),
            }
        }
        r.verified = Some(ok);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{write_usb_image, EspSpec};
    use defib_rescue::playbook::Arch;
    use std::collections::BTreeMap;

    /// A store folder holding `objects` (path on the victim, content).
    fn store_dir(dir: &Path, objects: &[(&str, &[u8])]) {
        std::fs::create_dir_all(dir.join(OBJECTS_DIR)).unwrap();
        let mut idx = Index::default();
        for (path, data) in objects {
            let sha = sha256_hex(data);
            std::fs::write(dir.join(OBJECTS_DIR).join(&sha), data).unwrap();
            idx.entries.push(Entry {
                name: None,
                product: "Windows XP Professional".into(),
                build: Some(2600),
                ubr_min: None,
                ubr_max: None,
                service_pack: Some("Service Pack 3".into()),
                arch: Some(Arch::X86),
                path: (*path).into(),
                file_version: None,
                sha256: sha,
                size: data.len() as u64,
                source: "test".into(),
            });
        }
        std::fs::write(dir.join(INDEX_FILE), idx.to_json().unwrap()).unwrap();
    }

    fn image(dir: &Path, free: u64) -> PathBuf {
        let out = dir.join("defib.img");
        let spec = EspSpec {
            files: BTreeMap::from([(
                MANIFEST.to_string(),
                br#"{"source_date_epoch": 1271808000}"#.to_vec(),
            )]),
            from_disk: BTreeMap::new(),
            dirs: vec!["reports".into()],
            label: "DEFIB".into(),
            free_space: free,
            seed: [3; 32],
            mtime: 1_271_808_000,
            legacy_bios_bootable: false,
        };
        write_usb_image(&spec, &out).unwrap();
        out
    }

    /// The store as the rescue would open it from the stick's files.
    fn rescue_view(img: &Path) -> (Store, tempfile::TempDir) {
        let t = tempfile::tempdir().unwrap();
        let u = UsbImage::open(img).unwrap();
        let root = t.path().join("store");
        std::fs::create_dir_all(root.join(OBJECTS_DIR)).unwrap();
        if let Ok(b) = u.read_file(&index_path()) {
            std::fs::write(root.join(INDEX_FILE), b).unwrap();
        }
        for e in u
            .list_dir(&format!("{MEDIUM_STORE_DIR}/{OBJECTS_DIR}"))
            .unwrap_or_default()
        {
            let b = u.read_file(&object_path(&e.name)).unwrap();
            std::fs::write(root.join(OBJECTS_DIR).join(&e.name), b).unwrap();
        }
        (Store::open(&root).unwrap(), t)
    }

    #[test]
    fn sync_interrupted_before_the_index_leaves_the_old_store_valid() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path(), 8 << 20);
        let v1 = t.path().join("v1");
        store_dir(&v1, &[(r"WINDOWS\system32\svchost.exe", b"svchost v1")]);
        let s = sync(&img, &v1, None).unwrap();
        assert_eq!((s.objects_copied, s.index_replaced), (1, true));
        let (st, _k) = rescue_view(&img);
        assert_eq!(st.index.entries.len(), 1);
        assert!(st.verify().unwrap().is_clean());

        // v2 adds two files; the cable is pulled after the objects.
        let v2 = t.path().join("v2");
        store_dir(
            &v2,
            &[
                (r"WINDOWS\system32\svchost.exe", b"svchost v1"),
                (r"WINDOWS\system32\lsass.exe", b"lsass"),
                (r"WINDOWS\system32\winlogon.exe", b"winlogon"),
            ],
        );
        let e = sync(&img, &v2, Some(Stop::BeforeIndex)).unwrap_err();
        assert!(e.to_string().contains("before the index"), "{e:#}");
        let (st, _k) = rescue_view(&img);
        assert_eq!(st.index.entries.len(), 1, "the old index is in force");
        let r = st.verify().unwrap();
        assert!(r.problems.is_empty(), "{r:?}");
        assert_eq!(r.orphans.len(), 2, "the new objects wait for their index");

        // Run again: the objects are there already, the index follows.
        let s = sync(&img, &v2, None).unwrap();
        assert_eq!((s.objects_copied, s.objects_present), (0, 3));
        assert!(s.index_replaced);
        let (st, _k) = rescue_view(&img);
        assert_eq!(st.index.entries.len(), 3);
        assert!(st.verify().unwrap().is_clean());
        assert_eq!(
            medium_store(&UsbImage::open(&img).unwrap(), true).verified,
            Some(3)
        );
        // A third run changes nothing.
        let s = sync(&img, &v2, None).unwrap();
        assert_eq!((s.objects_copied, s.index_replaced), (0, false));
    }

    #[test]
    fn a_corrupt_object_on_the_stick_is_found_and_replaced() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path(), 8 << 20);
        let src = t.path().join("store");
        store_dir(&src, &[(r"WINDOWS\system32\svchost.exe", b"the good one")]);
        sync(&img, &src, None).unwrap();
        let sha = sha256_hex(b"the good one");
        crate::image::add_file_to_image(&img, &object_path(&sha), b"the g00d one").unwrap();
        let m = medium_store(&UsbImage::open(&img).unwrap(), true);
        assert_eq!(m.verified, Some(0));
        assert!(
            m.problems.len() == 1 && m.problems[0].contains("is corrupt"),
            "{m:?}"
        );
        let s = sync(&img, &src, None).unwrap();
        assert_eq!((s.objects_copied, s.objects_repaired), (1, 1));
        let m = medium_store(&UsbImage::open(&img).unwrap(), true);
        assert_eq!((m.verified, m.problems.len()), (Some(1), 0));
    }

    #[test]
    fn a_bad_store_or_too_little_room_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path(), 1 << 20);
        let before = std::fs::read(&img).unwrap();
        let src = t.path().join("store");
        store_dir(&src, &[(r"WINDOWS\system32\svchost.exe", b"good")]);
        std::fs::write(src.join(OBJECTS_DIR).join(sha256_hex(b"good")), b"evil").unwrap();
        let e = format!("{:#}", sync(&img, &src, None).unwrap_err());
        assert!(
            e.contains("does not verify") && e.contains("nothing was written"),
            "{e}"
        );
        assert!(std::fs::read(&img).unwrap() == before);

        // Bigger than the free space (a minimal image has tens of MiB
        // free: it is at least FAT32-sized).
        let free = UsbImage::open(&img).unwrap().free_bytes().unwrap();
        let big = vec![9u8; free as usize + 1];
        let src2 = t.path().join("store2");
        store_dir(&src2, &[(r"WINDOWS\system32\big.dll", &big)]);
        let e = format!("{:#}", sync(&img, &src2, None).unwrap_err());
        assert!(
            e.contains("MiB free") && e.contains("nothing was written"),
            "{e}"
        );
        assert!(std::fs::read(&img).unwrap() == before);
    }

    #[test]
    fn a_mounted_stick_folder_syncs_the_same_way() {
        let t = tempfile::tempdir().unwrap();
        let stick = t.path().join("stick");
        std::fs::create_dir_all(stick.join("defib")).unwrap();
        let e = format!("{:#}", sync(&stick, t.path(), None).unwrap_err());
        assert!(e.contains("no defib/manifest.json"), "{e}");
        std::fs::write(stick.join(MANIFEST), b"{}").unwrap();
        let src = t.path().join("store");
        store_dir(&src, &[(r"WINDOWS\system32\svchost.exe", b"svc")]);
        let e = sync(&stick, &src, Some(Stop::BeforeIndex)).unwrap_err();
        assert!(e.to_string().contains("before the index"));
        assert!(!stick.join(index_path()).exists());
        sync(&stick, &src, None).unwrap();
        let st = Store::open(&stick.join(MEDIUM_STORE_DIR)).unwrap();
        assert_eq!(st.index.entries.len(), 1);
        assert!(st.verify().unwrap().is_clean());
    }
}
