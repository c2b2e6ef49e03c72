//! Where the rescue takes known-good store objects from when it runs as
//! PID 1 (docs/store-format.md): the index decides what is good, these
//! locations only supply bytes, which `Store::read_verified` checks.
//!
//! In order: the payloads' own `store/objects` (images built before the
//! store moved to the medium carry it there), the boot medium's
//! `\defib\store\objects`, and, on a network boot, `defib.store=`'s
//! `objects/` folder over HTTP. The medium's `\defib\store\index.json`,
//! which `defib store sync` keeps current, is preferred over the copy
//! built into the payloads; the report records which one was used.

use crate::layout;
use crate::report::StoreUsed;
use crate::store::{Location, Store, INDEX_FILE, OBJECTS_DIR};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the network part needs to come up on first use.
pub struct NetPlan {
    pub root: PathBuf,
    pub ip: Option<String>,
    pub bootif: Option<String>,
    /// How long to wait for the NIC to appear.
    pub wait: Duration,
}

/// Lines for the screen that arise while objects are fetched (the network
/// coming up); the caller shows them after the repair.
pub type Lines = Arc<Mutex<Vec<String>>>;

/// Adds the medium's folder and the HTTP base to `store`'s locations and
/// takes the medium's index if it has one. Returns what the report keeps,
/// and notes for the screen and report (a bad URL, a malformed medium index).
pub fn attach(
    store: &mut Store,
    medium: Option<&Path>,
    store_url: Option<&str>,
    net: NetPlan,
    lines: Lines,
) -> (StoreUsed, Vec<String>) {
    let mut notes = Vec::new();
    if let Some(m) = medium {
        let dir = m.join(layout::MEDIUM_STORE_DIR);
        match store.use_index(&dir.join(INDEX_FILE)) {
            Ok(_) => {}
            Err(e) => notes.push(format!(
                "store index on the medium unusable, using the image's own: {e:#}; \
                 run `defib store sync` on this stick again"
            )),
        }
        store.add_location(Location::Dir(dir.join(OBJECTS_DIR)));
    }
    if let Some(raw) = store_url {
        match http_location(raw, net, lines) {
            Ok(loc) => store.add_location(loc),
            Err(e) => notes.push(format!("defib.store={raw} not used: {e}")),
        }
    }
    let used = StoreUsed {
        index: store.index_origin.display().to_string(),
        index_sha256: store.index_sha256.clone(),
        entries: store.index.entries.len(),
        locations: store.locations().iter().map(|l| l.label()).collect(),
    };
    (used, notes)
}

/// `defib.store=http://IP[:PORT]/path/`: objects at `<path>objects/<sha256>`.
/// The network comes up on the first object asked for, not before: a run
/// that restores nothing from the store never touches it.
fn http_location(raw: &str, net: NetPlan, lines: Lines) -> Result<Location, String> {
    let base = super::net::ReportUrl::parse(raw).map_err(|e| e.to_string())?;
    let folder = base.url_of(&format!("{OBJECTS_DIR}/"));
    let up: Arc<Mutex<Option<Result<(), String>>>> = Arc::new(Mutex::new(None));
    let label = folder.clone();
    let fetch = move |sha: &str, cap: u64| -> anyhow::Result<Option<Vec<u8>>> {
        {
            let mut state = up.lock().unwrap_or_else(|p| p.into_inner());
            if state.is_none() {
                *state = Some(bring_up(&net, &lines));
            }
            if let Some(Err(e)) = state.as_ref() {
                anyhow::bail!("network unavailable: {e}");
            }
        }
        Ok(super::net::get(&format!("{folder}{sha}"), cap)?)
    };
    Ok(Location::Fetch {
        label,
        fetch: Arc::new(fetch),
    })
}

fn bring_up(net: &NetPlan, lines: &Lines) -> Result<(), String> {
    use super::net;
    let ip = net::parse_ip(net.ip.as_deref().unwrap_or("")).unwrap_or(net::IpArg::Dhcp);
    let mac = net.bootif.as_deref().and_then(net::parse_mac);
    let mut out = Vec::new();
    let r = net::bring_up(&net.root, &ip, mac.as_deref(), net.wait, &mut |l| {
        out.push(l)
    });
    let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
    l.extend(out);
    match r {
        Ok(up) => {
            l.push(format!(
                "store: network {} {} up to fetch objects",
                up.iface.name, up.config.address
            ));
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `VmHWM` (the rescue's peak resident memory) from `/proc/self/status` and
/// `MemAvailable` from `/proc/meminfo`, in KiB: the bench's measure of what
/// a store restore costs.
pub fn memory_line(root: &Path) -> String {
    let field = |file: &str, key: &str| -> String {
        std::fs::read_to_string(root.join(file))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix(key)
                        .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
                })
            })
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "memory: rescue peak {} KiB (VmHWM), available {} KiB (MemAvailable)",
        field("proc/self/status", "VmHWM:"),
        field("proc/meminfo", "MemAvailable:")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Entry, Index, SCHEMA};

    fn entry(data: &[u8]) -> Entry {
        Entry {
            name: Some("x".into()),
            product: String::new(),
            build: None,
            ubr_min: None,
            ubr_max: None,
            service_pack: None,
            arch: None,
            path: r"WINDOWS\x.dat".into(),
            file_version: None,
            sha256: crate::hash::sha256_hex(data),
            size: data.len() as u64,
            source: String::new(),
        }
    }

    #[test]
    fn medium_objects_and_index_are_used_and_recorded() {
        let payloads = tempfile::tempdir().unwrap();
        let medium = tempfile::tempdir().unwrap();
        let e = entry(b"on the stick");
        let idx = Index {
            schema: SCHEMA,
            entries: vec![e.clone()],
        };
        let dir = medium.path().join(layout::MEDIUM_STORE_DIR);
        std::fs::create_dir_all(dir.join(OBJECTS_DIR)).unwrap();
        std::fs::write(dir.join(INDEX_FILE), idx.to_json().unwrap()).unwrap();
        std::fs::write(dir.join(OBJECTS_DIR).join(&e.sha256), b"on the stick").unwrap();
        let mut s = Store::open(&payloads.path().join("store")).unwrap();
        let net = NetPlan {
            root: PathBuf::from("/nonexistent"),
            ip: None,
            bootif: None,
            wait: Duration::ZERO,
        };
        let (used, notes) = attach(
            &mut s,
            Some(medium.path()),
            Some("http://pxe.example/store/"),
            net,
            Lines::default(),
        );
        assert_eq!(used.entries, 1);
        assert_eq!(used.index, dir.join(INDEX_FILE).display().to_string());
        assert_eq!(used.locations.len(), 2, "{used:?}");
        assert!(
            notes.len() == 1 && notes[0].contains("cannot resolve"),
            "{notes:?}"
        );
        assert_eq!(
            s.read_verified(&s.by_name("x")[0].clone()).unwrap(),
            b"on the stick"
        );
    }

    #[test]
    fn an_unreachable_network_is_a_per_object_error() {
        let payloads = tempfile::tempdir().unwrap();
        let mut s = Store::open(payloads.path()).unwrap();
        let lines = Lines::default();
        let net = NetPlan {
            root: payloads.path().to_path_buf(),
            ip: None,
            bootif: None,
            wait: Duration::ZERO,
        };
        let (used, notes) = attach(&mut s, None, Some("http://10.9.9.9/s/"), net, lines);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(used.locations[1], "http://10.9.9.9/s/objects/");
        let err = format!("{:#}", s.read_verified(&entry(b"y")).unwrap_err());
        assert!(
            err.contains("network unavailable") && err.contains("is missing"),
            "{err}"
        );
    }
}
