//! BitLocker keys over the network (`defib.keys=http://IP[:PORT]/path/`),
//! for PXE-booted PCs that have no stick to carry a key file.
//!
//! Asked only for a locked volume the stick's keys did not open, before
//! the typed prompt. With a folder URL (ending in `/`) the rescue GETs
//! `<path><guid>` for each of the volume's recovery-password and
//! startup-key protectors: the GUID lowercase without braces first, and on
//! a 404 the same GUID uppercase — at most two requests per protector. Any
//! other URL is one key file, fetched once per boot. A body is read by the
//! same parsers as the stick's key files (a bare 48-digit recovery
//! password, a CSV export, the `.TXT` Windows saves, a `.BEK`).
//!
//! A 404 means "no key for that protector here" and is quiet; every other
//! failure becomes a line for the screen and the report, naming the URL,
//! never a key. Bounds: 3 s to connect, 5 s per read or write, 1 MiB per
//! body; a server that cannot be reached is not asked again this boot.
//!
//! Not an HTTP client: one `GET` in HTTP/1.0 (so no chunked answers), no
//! redirects, no TLS, no names.

use crate::bitlocker::keyfile::{decode_text, KeyStore};
use crate::bitlocker::{Metadata, ProtectorKind};
use crate::bootargs::KeysUrl;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use zeroize::Zeroizing;

/// Bounds on one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub io: Duration,
    /// Larger answers are refused (a key file is a few KiB; a fleet CSV
    /// of ten thousand keys is about 1 MiB).
    pub max_body: usize,
}

/// What the rescue uses.
pub const LIMITS: Limits = Limits {
    connect: Duration::from_secs(3),
    io: Duration::from_secs(5),
    max_body: 1 << 20,
};

/// The answer to one GET.
pub enum Got {
    /// 200: the body, wiped when dropped.
    Body(Zeroizing<Vec<u8>>),
    /// 404 or 410: no key there.
    NotFound,
}

/// Why a GET failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetError {
    /// The server could not be reached: no point asking it again.
    Unreachable(String),
    /// It answered, but not with a usable key file.
    Answer(String),
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetError::Unreachable(s) | GetError::Answer(s) => f.write_str(s),
        }
    }
}

/// One `GET <path><name>`.
pub fn get(url: &KeysUrl, name: &str, lim: &Limits) -> Result<Got, GetError> {
    let addr = SocketAddr::V4(url.addr);
    let req = format!(
        "GET {}{} HTTP/1.0\r\nHost: {}\r\nUser-Agent: defib-rescue/{}\r\nConnection: close\r\n\r\n",
        url.path,
        name,
        url.host,
        crate::VERSION
    );
    // Headers are small; the body is capped. Everything read may hold a
    // key: the client keeps it in a wiped buffer.
    let bounds = crate::pid1::net::client::Bounds {
        connect: lim.connect,
        io: lim.io,
        cap: lim.max_body + 16 * 1024,
    };
    let answer = crate::pid1::net::client::exchange(
        addr,
        url.tls,
        req.as_bytes(),
        &bounds,
        &crate::pid1::net::client::whole_answer_in,
    )
    .map_err(|e| match e {
        crate::pid1::net::client::ExchangeError::Unreachable(m) => GetError::Unreachable(m),
        crate::pid1::net::client::ExchangeError::Reading(m)
        | crate::pid1::net::client::ExchangeError::Refused(m) => GetError::Answer(m),
    })?;
    if answer.capped {
        return Err(GetError::Answer(format!(
            "the answer is larger than {} KiB: not a key file",
            lim.max_body / 1024
        )));
    }
    let data = answer.data;
    parse_answer(&data, lim)
}

/// Status, headers and body of a complete HTTP/1.x answer.
pub fn parse_answer(data: &[u8], lim: &Limits) -> Result<Got, GetError> {
    let bad = |m: String| Err(GetError::Answer(m));
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return bad("no complete HTTP answer".into());
    };
    let head = String::from_utf8_lossy(&data[..end]);
    let Some(code) = crate::pid1::net::status_code(head.as_bytes()) else {
        return bad("no HTTP status line in the answer".into());
    };
    let status: String = head
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(60)
        .collect();
    match code {
        200 => {}
        404 | 410 => return Ok(Got::NotFound),
        _ => return bad(format!("the server answered {status:?}")),
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| !v.eq_ignore_ascii_case("identity")) {
        return bad("the server sent a chunked answer to an HTTP/1.0 request".into());
    }
    let body = &data[end + 4..];
    if body.len() > lim.max_body {
        return bad(format!(
            "the answer is larger than {} KiB: not a key file",
            lim.max_body / 1024
        ));
    }
    if let Some(len) = header("content-length") {
        match len.parse::<usize>() {
            Ok(n) if n == body.len() => {}
            Ok(n) => {
                return bad(format!(
                    "the answer was cut off ({} of {n} bytes)",
                    body.len()
                ))
            }
            Err(_) => return bad(format!("bad Content-Length {len:?}")),
        }
    }
    Ok(Got::Body(Zeroizing::new(body.to_vec())))
}

/// Adds the keys in one fetched body to `store`, read by content: a
/// `.BEK`, a CSV export (a first line with a separator and a recovery key
/// column), else text holding 48-digit recovery passwords (a bare key, the
/// `.TXT` Windows saves). Returns how many keys it added.
pub fn add_body(store: &mut KeyStore, body: &[u8], source: &str) -> usize {
    if store.add_bek(body, source).is_ok() {
        return 1;
    }
    let text = Zeroizing::new(decode_text(body));
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if first.contains([',', ';', '\t']) {
        if let Ok(n) = store.add_csv(&text, source) {
            return n;
        }
    }
    store.add_recovery_text(&text, source)
}

/// What one fetch for a volume gave.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Keys added to the store.
    pub added: usize,
    /// Progress for the screen (URLs and protector IDs only).
    pub lines: Vec<String>,
    /// Failures for the screen, the report and the verdict.
    pub problems: Vec<String>,
}

/// Brings the network up; progress lines go to the vector.
pub type Link = Box<dyn FnMut(&mut Vec<String>) -> Result<(), String>>;

/// The network key source of one boot.
pub struct NetKeys {
    url: KeysUrl,
    lim: Limits,
    /// Brings the network up (PID 1: `net::bring_up`); called once, when
    /// the first locked volume needs a key. Gets a sink for progress lines.
    link: Link,
    link_state: Option<Result<(), String>>,
    /// Set when the server could not be reached: not asked again.
    unreachable: Option<String>,
    /// URLs already asked for (several volumes may share a protector ID,
    /// and a single key file serves every volume).
    asked: BTreeSet<String>,
}

impl NetKeys {
    pub fn new(url: KeysUrl, lim: Limits, link: Link) -> NetKeys {
        NetKeys {
            url,
            lim,
            link,
            link_state: None,
            unreachable: None,
            asked: BTreeSet::new(),
        }
    }

    /// The names to GET for `meta`'s protectors, in order, as
    /// (protector short ID, [spellings]).
    fn names(&self, meta: &Metadata) -> Vec<Vec<String>> {
        if !self.url.is_folder() {
            return vec![vec![String::new()]];
        }
        meta.vmks()
            .filter(|v| {
                matches!(
                    v.kind,
                    ProtectorKind::RecoveryPassword | ProtectorKind::StartupKey
                )
            })
            .map(|v| {
                let lower = v.guid.to_string();
                vec![lower.clone(), lower.to_ascii_uppercase()]
            })
            .collect()
    }

    /// Asks the server for keys to `dev`'s protectors and adds what it
    /// gives to `store`.
    pub fn fetch(&mut self, dev: &str, meta: &Metadata, store: &mut KeyStore) -> Fetched {
        let mut f = Fetched::default();
        if let Some(e) = &self.unreachable {
            f.lines.push(format!(
                "keys: not asking {} for /dev/{dev}: it could not be reached ({e})",
                self.url.url_of("")
            ));
            return f;
        }
        let link = match &self.link_state {
            Some(s) => s.clone(),
            None => {
                let s = (self.link)(&mut f.lines);
                self.link_state = Some(s.clone());
                s
            }
        };
        if let Err(e) = link {
            f.problems
                .push(format!("keys: no network for {}: {e}", self.url.url_of("")));
            return f;
        }
        let before = store.records.len();
        let rejected = store.rejected.len();
        'protectors: for spellings in self.names(meta) {
            for name in spellings {
                let url = self.url.url_of(&name);
                if !self.asked.insert(url.clone()) {
                    continue 'protectors;
                }
                match get(&self.url, &name, &self.lim) {
                    Ok(Got::NotFound) if self.url.is_folder() => {
                        f.lines.push(format!("keys: no key at {url}"));
                    }
                    Ok(Got::NotFound) => {
                        f.problems
                            .push(format!("keys: {url} answered 404: no key file there"));
                    }
                    Ok(Got::Body(body)) => {
                        let n = add_body(store, &body, &format!("network:{url}"));
                        f.lines
                            .push(format!("keys: {n} key(s) for /dev/{dev} from {url}"));
                        continue 'protectors;
                    }
                    Err(e @ GetError::Unreachable(_)) => {
                        f.problems.push(format!("keys: {url}: {e}"));
                        self.unreachable = Some(e.to_string());
                        break 'protectors;
                    }
                    Err(e) => {
                        f.problems.push(format!("keys: {url}: {e}"));
                        continue 'protectors;
                    }
                }
            }
        }
        f.added = store.records.len() - before;
        // Files that held no usable key: named by URL and line, never the key.
        for r in &store.rejected[rejected..] {
            f.problems.push(format!("key file {r}"));
        }
        f
    }
}

/// The key source PID 1 installs for `defib.keys=`: the network comes up
/// the way the report's PUT brings it up (the boot loader's `ip=` and
/// `BOOTIF=`, else DHCP), once, when the first locked volume needs a key.
pub fn for_boot(
    root: &std::path::Path,
    url: KeysUrl,
    args: &crate::bootargs::BootArgs,
) -> crate::volumes::KeyFetch {
    use super::net;
    let root = root.to_path_buf();
    let (ip, bootif) = (args.ip.clone(), args.bootif.clone());
    let link = Box::new(move |lines: &mut Vec<String>| {
        let ip = net::parse_ip(ip.as_deref().unwrap_or("")).unwrap_or(net::IpArg::Dhcp);
        let mac = bootif.as_deref().and_then(net::parse_mac);
        let mut say = |l: String| lines.push(l);
        let up = net::bring_up(
            &root,
            &ip,
            mac.as_deref(),
            Duration::from_secs(15),
            &mut say,
        )
        .map_err(|e| e.to_string())?;
        lines.push(format!(
            "network: {} {}/{} ({}) for keys",
            up.iface.name,
            up.config.address,
            net::prefix_len(up.config.netmask),
            up.how
        ));
        Ok(())
    });
    let mut nk = NetKeys::new(url, LIMITS, link);
    Box::new(move |dev, meta, store| {
        let f = nk.fetch(dev, meta, store);
        crate::volumes::Fetched {
            lines: f.lines,
            problems: f.problems,
        }
    })
}

#[cfg(test)]
mod tests;
