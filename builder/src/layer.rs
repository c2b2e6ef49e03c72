//! `defib build --playbooks DIR --store DIR`: a pipeline's own incident
//! playbooks and known-good files layered over the built-in payloads,
//! without forking them.
//!
//! The layers are staged into one payloads folder (a scratch folder the
//! build then reads like any `--payloads`): the base's playbooks, then
//! each `--playbooks` folder's `*.toml` (a playbook whose id is already
//! there replaces it, and the build log says so); the base's store, then
//! each `--store` folder's entries and objects (an entry already claimed
//! is kept once; the same path for the same Windows with another hash is
//! an error naming both folders, because the rescue would refuse to choose
//! between them). Store objects are hard-linked into the stage where the
//! filesystem allows (a 400 MB store costs nothing to stage), else copied.
//! Every layer is validated the way the build validates payloads before
//! anything is staged.
//!
//! This is NOT a merge tool for the repository's payloads: nothing in the
//! layers is changed, and the stage is removed after the build.

use anyhow::{bail, Context, Result};
use defib_rescue::playbook::{load_dir, Playbook};
use defib_rescue::store::{Index, Store, INDEX_FILE, OBJECTS_DIR};
use std::path::{Path, PathBuf};

/// A staged payloads folder; removed when dropped.
pub struct Staged {
    dir: tempfile::TempDir,
}

impl Staged {
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("payloads")
    }
}

/// Stages `base` with `playbooks` and `stores` layered over it. `log`
/// gets one line per replaced playbook and per layer.
pub fn stage(
    base: &Path,
    playbooks: &[PathBuf],
    stores: &[PathBuf],
    log: &mut dyn FnMut(&str),
) -> Result<Staged> {
    let dir = tempfile::Builder::new()
        .prefix(".defib-payloads-")
        .tempdir()
        .context("creating a scratch folder for the layered payloads")?;
    let out = dir.path().join("payloads");
    let pb_out = out.join("playbooks");
    std::fs::create_dir_all(&pb_out)?;

    // Playbooks: by id, later layers win; files keep their names, a
    // replaced playbook's file is dropped.
    let mut chosen: Vec<(String, PathBuf)> = Vec::new();
    let mut layers = vec![base.join("playbooks")];
    layers.extend(playbooks.iter().cloned());
    for (i, layer) in layers.iter().enumerate() {
        if i == 0 && !layer.is_dir() {
            continue;
        }
        if !layer.is_dir() {
            bail!(
                "--playbooks {}: not a folder of playbook .toml files",
                layer.display()
            );
        }
        let pbs = load_dir(layer).with_context(|| format!("playbooks in {}", layer.display()))?;
        for pb in pbs {
            let file = playbook_file(layer, &pb)?;
            if let Some(slot) = chosen.iter_mut().find(|(id, _)| *id == pb.id) {
                log(&format!(
                    "playbook {} from {} replaces the one from {}",
                    pb.id,
                    layer.display(),
                    slot.1.parent().unwrap_or(Path::new("")).display()
                ));
                slot.1 = file;
            } else {
                chosen.push((pb.id.clone(), file));
            }
        }
    }
    let mut names: Vec<String> = Vec::new();
    for (id, file) in &chosen {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{id}.toml"));
        // Two layers may use one file name for different ids.
        let name = if names.contains(&name) {
            format!("{id}.toml")
        } else {
            name
        };
        std::fs::copy(file, pb_out.join(&name))
            .with_context(|| format!("staging {}", file.display()))?;
        names.push(name);
    }

    // Stores.
    let mut index = Index::default();
    let mut origin: Vec<PathBuf> = Vec::new();
    let mut store_layers = vec![base.join("store")];
    store_layers.extend(stores.iter().cloned());
    let objects = out.join("store").join(OBJECTS_DIR);
    for (i, layer) in store_layers.iter().enumerate() {
        if i > 0 && !layer.join(INDEX_FILE).is_file() {
            bail!(
                "--store {}: no {INDEX_FILE} there; a store is made with `defib store import`",
                layer.display()
            );
        }
        let store =
            Store::open(layer).with_context(|| format!("the store in {}", layer.display()))?;
        if i > 0 {
            let v = store.verify()?;
            if !v.problems.is_empty() {
                bail!(
                    "--store {} does not verify: {}; run `defib store verify --store {}`",
                    layer.display(),
                    v.problems.join("; "),
                    layer.display()
                );
            }
            log(&format!(
                "store layer {}: {} entries",
                layer.display(),
                store.index.entries.len()
            ));
        }
        for e in &store.index.entries {
            if index.entries.iter().any(|o| o.same_claim(e)) {
                continue;
            }
            if let Some((j, o)) = index.entries.iter().enumerate().find(|(_, o)| {
                o.name.is_none()
                    && e.name.is_none()
                    && o.build == e.build
                    && o.arch == e.arch
                    && o.ubr_min == e.ubr_min
                    && o.ubr_max == e.ubr_max
                    && defib_rescue::store::path_key(&o.path)
                        == defib_rescue::store::path_key(&e.path)
                    && o.service_pack.as_deref().map(str::to_ascii_lowercase)
                        == e.service_pack.as_deref().map(str::to_ascii_lowercase)
                    && o.sha256 != e.sha256
            }) {
                bail!(
                    "{} for build {:?} is {} in {} but {} in {}: the rescue would refuse to \
                     choose; keep one",
                    e.path,
                    e.build,
                    o.sha256,
                    origin[j].display(),
                    e.sha256,
                    layer.display()
                );
            }
            std::fs::create_dir_all(&objects)?;
            let dest = objects.join(&e.sha256);
            if !dest.exists() {
                let src = store.object_path(&e.sha256);
                if std::fs::hard_link(&src, &dest).is_err() {
                    std::fs::copy(&src, &dest)
                        .with_context(|| format!("staging {}", src.display()))?;
                }
            }
            index.entries.push(e.clone());
            origin.push(layer.clone());
        }
    }
    if !index.entries.is_empty() {
        crate::store::sort_entries(&mut index.entries);
        std::fs::write(out.join("store").join(INDEX_FILE), index.to_json()?)
            .context("writing the layered store index")?;
    }
    Ok(Staged { dir })
}

/// The `.toml` file in `layer` that holds `pb` (by its `source` name when
/// the parser kept one, else by id).
fn playbook_file(layer: &Path, pb: &Playbook) -> Result<PathBuf> {
    for e in std::fs::read_dir(layer)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p)?;
            if let Ok(other) = Playbook::parse(&text, &p.display().to_string()) {
                if other.id == pb.id {
                    return Ok(p);
                }
            }
        }
    }
    bail!("no file in {} holds playbook {}", layer.display(), pb.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn playbook(id: &str, title: &str) -> String {
        crate::template::playbook(id, "2026-11-29")
            .unwrap()
            .replace(
                "title = \"TODO: vendor, what it removed, the detection name\"",
                &format!("title = \"{title}\""),
            )
    }

    fn store_with(dir: &Path, path: &str, bytes: &[u8]) -> String {
        let sha = defib_rescue::hash::sha256_hex(bytes);
        std::fs::create_dir_all(dir.join(OBJECTS_DIR)).unwrap();
        std::fs::write(dir.join(OBJECTS_DIR).join(&sha), bytes).unwrap();
        let idx = serde_json::json!({"schema": 1, "entries": [{
            "product": "Windows XP Professional", "build": 2600, "arch": "x86",
            "service_pack": "Service Pack 3", "path": path,
            "sha256": sha, "size": bytes.len()}]});
        std::fs::write(dir.join(INDEX_FILE), idx.to_string()).unwrap();
        sha
    }

    #[test]
    fn playbooks_and_stores_layer_over_the_base() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base");
        std::fs::create_dir_all(base.join("playbooks")).unwrap();
        std::fs::write(base.join("playbooks/a.toml"), playbook("acme-a", "base A")).unwrap();
        std::fs::write(base.join("playbooks/b.toml"), playbook("acme-b", "base B")).unwrap();
        let sha1 = store_with(&base.join("store"), r"WINDOWS\system32\one.dll", b"one");
        let extra = t.path().join("extra");
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::write(extra.join("b2.toml"), playbook("acme-b", "pipeline B")).unwrap();
        std::fs::write(extra.join("c.toml"), playbook("acme-c", "pipeline C")).unwrap();
        let st = t.path().join("st");
        let sha2 = store_with(&st, r"WINDOWS\system32\two.dll", b"two");
        let mut lines = Vec::new();
        let s = stage(&base, std::slice::from_ref(&extra), &[st], &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        let pbs = load_dir(&s.path().join("playbooks")).unwrap();
        let mut got: Vec<(String, String)> = pbs
            .iter()
            .map(|p| (p.id.clone(), p.title.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("acme-a".into(), "base A".into()),
                ("acme-b".into(), "pipeline B".into()),
                ("acme-c".into(), "pipeline C".into())
            ]
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("acme-b") && l.contains("replaces")),
            "{lines:?}"
        );
        let store = Store::open(&s.path().join("store")).unwrap();
        assert_eq!(store.index.entries.len(), 2);
        assert!(store.verify().unwrap().is_clean());
        for sha in [sha1, sha2] {
            assert!(store.object_path(&sha).is_file());
        }
        // The layers themselves are untouched, and the stage goes away.
        assert!(base.join("playbooks/b.toml").is_file());
        let p = s.path();
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn conflicting_or_broken_layers_are_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base");
        store_with(&base.join("store"), r"WINDOWS\system32\one.dll", b"one");
        let other = t.path().join("other");
        store_with(&other, r"WINDOWS\system32\ONE.DLL", b"not one");
        let err = stage(&base, &[], std::slice::from_ref(&other), &mut |_| {})
            .err()
            .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("refuse to choose") && msg.contains("other"),
            "{msg}"
        );
        // A corrupt object in a layer.
        let bad = t.path().join("bad");
        let sha = store_with(&bad, r"WINDOWS\system32\x.dll", b"x");
        std::fs::write(bad.join(OBJECTS_DIR).join(&sha), b"y").unwrap();
        let err = stage(&base, &[], &[bad], &mut |_| {}).err().unwrap();
        assert!(format!("{err:#}").contains("does not verify"), "{err:#}");
        // Not a store, not a playbook folder, a broken playbook.
        assert!(stage(&base, &[], &[t.path().join("nope")], &mut |_| {}).is_err());
        assert!(stage(&base, &[t.path().join("nope")], &[], &mut |_| {}).is_err());
        let broken = t.path().join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("x.toml"), "schema = 1\nid = \"x\"\n").unwrap();
        let err = stage(&base, &[broken], &[], &mut |_| {}).err().unwrap();
        assert!(format!("{err:#}").contains("broken"), "{err:#}");
    }
}
