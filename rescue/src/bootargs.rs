//! Kernel command line: the `defib.*` keys and `console=` entries the rescue
//! obeys when it runs as PID 1, and their rendering for the builder, which
//! writes them into boot menus and PXE scripts. One type per decision, so the
//! boot menu's entry, the rescue's mode and the report's `boot.mode` are the
//! same value; the key names are [`crate::layout::keys`].
//!
//! This is not a general kernel parameter parser: it splits the line the way
//! the kernel does (whitespace, double quotes around values), keeps the few
//! keys defib reads and ignores everything else. A bad value never stops a
//! boot; it becomes a warning and the default is used.

use crate::layout::keys;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// What the rescue does after probing (`defib.mode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Probe, evaluate and (once the engine exists) repair; then reboot.
    #[default]
    Auto,
    /// Probe and report only; nothing is written to any victim disk.
    Scan,
    /// Probe, then hand the technician a busybox shell.
    Shell,
}

/// What happens at the end of a run (`defib.after=`); also `defib build
/// --after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum After {
    #[default]
    Reboot,
    Poweroff,
}

/// How the image reached the machine, as hinted by the boot loader
/// (`defib.medium=`). PXE menus pass `pxe` because there is no stick to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MediumHint {
    Usb,
    Pxe,
    Cdrom,
}

/// How long the recovery-key prompt waits for a first (or next) keystroke.
pub const DEFAULT_KEYWAIT: Duration = Duration::from_secs(90);

/// The default bound on waiting for block devices and the boot medium.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(15);

/// Everything the rescue reads from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    pub mode: Mode,
    pub after: After,
    /// Upper bound on waiting for block devices and the boot medium.
    pub wait: Duration,
    pub medium: Option<MediumHint>,
    /// Device nodes for every `console=` entry, in command line order,
    /// without duplicates (`console=ttyS0,115200` -> `/dev/ttyS0`).
    pub consoles: Vec<PathBuf>,
    /// One line per bad value, for the screen and the report.
    pub warnings: Vec<String>,
    /// `defib.report=`: where to PUT the report (checked by `net`).
    pub report_url: Option<String>,
    /// `defib.store=`: where to GET store objects from (checked by `net`).
    pub store_url: Option<String>,
    /// The kernel's `ip=`, as the boot loader passed it (parsed by `net`).
    pub ip: Option<String>,
    /// `BOOTIF=`: the MAC address of the NIC the machine booted from.
    pub bootif: Option<String>,
    /// `defib.fault=`: the journal fault point to stop at (tests only).
    pub fault: Option<u64>,
    /// `defib.hash-unlocked=1`: hash each unlocked BitLocker volume.
    pub hash_unlocked: bool,
    /// `defib.keywait=`: the recovery-key prompt's bound without a keystroke.
    pub keywait: Duration,
    /// `defib.keys=`: where to fetch BitLocker keys over HTTP.
    pub keys_url: Option<KeysUrl>,
    /// `defib.tls=sha256:HEX`: the certificate every `https://` URL must show.
    pub tls_pin: Option<Pin>,
}

impl Default for BootArgs {
    fn default() -> Self {
        BootArgs {
            mode: Mode::default(),
            after: After::default(),
            wait: DEFAULT_WAIT,
            medium: None,
            consoles: Vec::new(),
            warnings: Vec::new(),
            report_url: None,
            store_url: None,
            ip: None,
            bootif: None,
            fault: None,
            hash_unlocked: false,
            keywait: DEFAULT_KEYWAIT,
            keys_url: None,
            tls_pin: None,
        }
    }
}

impl BootArgs {
    /// Parses a kernel command line as found in `/proc/cmdline`.
    pub fn parse(line: &str) -> BootArgs {
        let mut args = BootArgs::default();
        for word in split(line) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, v),
                None => (word.as_str(), ""),
            };
            match key {
                keys::MODE => match Mode::from_value(value) {
                    Some(m) => args.mode = m,
                    None => args.bad(key, value, Mode::default().as_str()),
                },
                keys::AFTER => match After::from_value(value) {
                    Some(a) => args.after = a,
                    None => args.bad(key, value, After::default().as_str()),
                },
                keys::WAIT => match value.parse::<u64>() {
                    // An hour is far beyond any USB enumeration; a larger
                    // number is a typo, not a wish.
                    Ok(secs) if secs <= 3600 => args.wait = Duration::from_secs(secs),
                    _ => args.bad(key, value, "15"),
                },
                keys::MEDIUM => match MediumHint::from_value(value) {
                    Some(m) => args.medium = Some(m),
                    None => args.bad(key, value, "none"),
                },
                keys::REPORT if !value.is_empty() => args.report_url = Some(value.into()),
                keys::STORE if !value.is_empty() => args.store_url = Some(value.into()),
                keys::FAULT => match value.parse::<u64>() {
                    Ok(n) if n > 0 => args.fault = Some(n),
                    _ => args.bad(key, value, "none"),
                },
                keys::KEYWAIT => match value.parse::<u64>() {
                    Ok(secs) if secs <= 3600 => args.keywait = Duration::from_secs(secs),
                    _ => args.bad(key, value, "90"),
                },
                keys::HASH_UNLOCKED => match value {
                    "1" => args.hash_unlocked = true,
                    "0" => args.hash_unlocked = false,
                    _ => args.bad(key, value, "0"),
                },
                keys::KEYS_URL => match KeysUrl::parse(value) {
                    Ok(u) => args.keys_url = Some(u),
                    Err(e) => args
                        .warnings
                        .push(format!("ignoring {key}=: {e}; no keys over the network")),
                },
                keys::TLS => match parse_pin(value) {
                    Ok(p) => args.tls_pin = Some(p),
                    Err(e) => args.warnings.push(format!(
                        "ignoring {key}=: {e}; https:// URLs will not be trusted"
                    )),
                },
                keys::IP => args.ip = Some(value.into()),
                keys::BOOTIF => args.bootif = Some(value.into()),
                keys::CONSOLE => {
                    // The name ends at the first comma: `ttyS0,115200n8`.
                    // Only plain device names are taken; anything with a
                    // slash is not a node under /dev we should open.
                    let name = value.split(',').next().unwrap_or("");
                    if name.is_empty() || name.contains('/') || name == "null" {
                        continue;
                    }
                    let path = PathBuf::from("/dev").join(name);
                    if !args.consoles.contains(&path) {
                        args.consoles.push(path);
                    }
                }
                _ => {}
            }
        }
        args
    }

    fn bad(&mut self, key: &str, value: &str, default: &str) {
        self.warnings
            .push(format!("ignoring bad {key}={value:?}, using {default}"));
    }
}

// ---- `defib.tls=`: the certificate an https:// URL must show. ----

/// The SHA-256 of a certificate's DER encoding.
pub type Pin = [u8; 32];

/// Parses `sha256:HEX` (64 hex digits; colons between bytes allowed, as
/// `openssl x509 -fingerprint -sha256` prints them, any case).
pub fn parse_pin(value: &str) -> Result<Pin, String> {
    let Some(hex) = value
        .strip_prefix("sha256:")
        .or_else(|| value.strip_prefix("SHA256:"))
    else {
        return Err(format!(
            "{value:?} is not sha256:<64 hex digits> (the SHA-256 of the server's certificate)"
        ));
    };
    let digits: String = hex.chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "sha256:{hex}: a certificate's SHA-256 is 64 hex digits"
        ));
    }
    let mut pin = [0u8; 32];
    for (i, b) in pin.iter_mut().enumerate() {
        *b = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(pin)
}

/// `sha256:` and the 64 lower-case hex digits.
pub fn pin_text(pin: &Pin) -> String {
    let mut s = String::from("sha256:");
    for b in pin {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The first 16 hex digits: enough to tell two certificates apart on a
/// screen line.
pub fn pin_short(pin: &Pin) -> String {
    pin_text(pin)[..7 + 16].to_string()
}

/// Where BitLocker keys come from over the network (`defib.keys=`):
/// `http://IPv4[:PORT]/path/` or `https://` (the certificate pinned by
/// `defib.tls=`). A URL ending in `/` is a folder of files named after
/// protector GUIDs; any other URL is one key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysUrl {
    pub addr: std::net::SocketAddrV4,
    /// `https://`: TLS to the pinned certificate.
    pub tls: bool,
    /// `IP[:PORT]` as written, for the `Host:` header and messages.
    pub host: String,
    /// The path, starting with `/`.
    pub path: String,
}

impl KeysUrl {
    /// Checks a `defib.keys=` value. `http://` or `https://` with a
    /// literal IPv4 address: as a static glibc binary the rescue has no
    /// resolver, so a host name could never be looked up.
    pub fn parse(url: &str) -> Result<KeysUrl, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => return Err(format!("{url}: not an http:// or https:// URL")),
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if path
            .contains(|c: char| matches!(c, '?' | '#' | '%') || c.is_whitespace() || c.is_control())
            || path.split('/').any(|seg| seg == "..")
        {
            return Err(format!(
                "{url}: the path may hold no query, fragment, escapes, spaces or `..`"
            ));
        }
        if hostport.starts_with('[') {
            return Err(format!(
                "{url}: not an IPv4 address; the rescue fetches keys over IPv4 only"
            ));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) if p != 0 => (h, p),
                _ => return Err(format!("{url}: bad port {p:?}")),
            },
            None => (hostport, if tls { 443 } else { 80 }),
        };
        let ip: std::net::Ipv4Addr = host.parse().map_err(|_| {
            format!(
                "{url}: {host:?} is not an IPv4 address; the rescue cannot resolve host \
                 names (a static binary without a resolver), write the server's address"
            )
        })?;
        Ok(KeysUrl {
            addr: std::net::SocketAddrV4::new(ip, port),
            tls,
            host: hostport.to_string(),
            path: path.to_string(),
        })
    }

    /// A folder of per-protector files (the URL ends in `/`), else one file.
    pub fn is_folder(&self) -> bool {
        self.path.ends_with('/')
    }

    /// The full URL of `name` in the folder (or of the file itself when
    /// `name` is empty).
    pub fn url_of(&self, name: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}{}", self.host, self.path, name)
    }
}

/// Splits like the kernel's `next_arg()`: whitespace separates words, and
/// double quotes protect spaces (`key="a b"`); the quotes themselves go.
fn split(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

impl Mode {
    /// Every mode, in boot menu order (the first is the default entry).
    pub const ALL: [Mode; 3] = [Mode::Auto, Mode::Scan, Mode::Shell];

    /// The value after `defib.mode=`, and the report's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Scan => "scan",
            Mode::Shell => "shell",
        }
    }

    pub fn from_value(v: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == v)
    }

    /// `defib.mode=auto`.
    pub fn arg(self) -> String {
        format!("{}={}", keys::MODE, self.as_str())
    }

    /// What the repair engine may do in this mode: only `auto` writes.
    pub fn engine_mode(self) -> crate::engine::Mode {
        match self {
            Mode::Auto => crate::engine::Mode::Fix,
            Mode::Scan | Mode::Shell => crate::engine::Mode::Scan,
        }
    }

    /// The boot mode a host-mode run is reported under.
    pub fn of_engine(m: crate::engine::Mode) -> Mode {
        match m {
            crate::engine::Mode::Fix => Mode::Auto,
            crate::engine::Mode::Scan => Mode::Scan,
        }
    }
}

impl After {
    pub fn as_str(self) -> &'static str {
        match self {
            After::Reboot => "reboot",
            After::Poweroff => "poweroff",
        }
    }

    pub fn from_value(v: &str) -> Option<After> {
        [After::Reboot, After::Poweroff]
            .into_iter()
            .find(|a| a.as_str() == v)
    }

    /// `defib.after=poweroff`, or nothing for the default (reboot), so
    /// menus stay short.
    pub fn arg(self) -> Option<String> {
        (self != After::default()).then(|| format!("{}={}", keys::AFTER, self.as_str()))
    }
}

impl MediumHint {
    pub fn as_str(self) -> &'static str {
        match self {
            MediumHint::Usb => "usb",
            MediumHint::Pxe => "pxe",
            MediumHint::Cdrom => "cdrom",
        }
    }

    pub fn from_value(v: &str) -> Option<MediumHint> {
        [MediumHint::Usb, MediumHint::Pxe, MediumHint::Cdrom]
            .into_iter()
            .find(|m| m.as_str() == v)
    }

    /// `defib.medium=pxe`.
    pub fn arg(self) -> String {
        format!("{}={}", keys::MEDIUM, self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_nothing_given() {
        let a = BootArgs::parse("BOOT_IMAGE=/vmlinuz quiet\n");
        assert_eq!(a, BootArgs::default());
        assert_eq!(a.wait, Duration::from_secs(15));
    }

    #[test]
    fn reads_every_key() {
        let a = BootArgs::parse(
            "quiet defib.mode=shell defib.after=poweroff defib.wait=40 defib.medium=pxe",
        );
        assert_eq!(a.mode, Mode::Shell);
        assert_eq!(a.after, After::Poweroff);
        assert_eq!(a.wait, Duration::from_secs(40));
        assert_eq!(a.medium, Some(MediumHint::Pxe));
        assert!(a.warnings.is_empty());
    }

    #[test]
    fn scan_mode_and_zero_wait() {
        let a = BootArgs::parse("defib.mode=scan defib.wait=0");
        assert_eq!(a.mode, Mode::Scan);
        assert_eq!(a.wait, Duration::ZERO);
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let a = BootArgs::parse(
            "defib.mode=fix defib.after=halt defib.wait=-3 defib.medium=floppy defib.wait=9999",
        );
        assert_eq!(a.mode, Mode::Auto);
        assert_eq!(a.after, After::Reboot);
        assert_eq!(a.wait, DEFAULT_WAIT);
        assert_eq!(a.medium, None);
        assert_eq!(a.warnings.len(), 5);
        assert!(a.warnings[0].contains("defib.mode=\"fix\""));
    }

    #[test]
    fn key_without_value_is_bad() {
        let a = BootArgs::parse("defib.mode");
        assert_eq!(a.mode, Mode::Auto);
        assert_eq!(a.warnings.len(), 1);
    }

    #[test]
    fn consoles_in_order_without_options_or_duplicates() {
        let a = BootArgs::parse("console=tty0 console=ttyS0,115200n8 console=tty0 console=");
        assert_eq!(
            a.consoles,
            vec![PathBuf::from("/dev/tty0"), PathBuf::from("/dev/ttyS0")]
        );
    }

    #[test]
    fn odd_consoles_are_skipped() {
        let a = BootArgs::parse("console=../../etc/x console=null");
        assert!(a.consoles.is_empty());
    }

    #[test]
    fn network_keys() {
        let a = BootArgs::parse(
            "ip=10.0.2.15::10.0.2.2:255.255.255.0 BOOTIF=01-52-54-00-12-34-56 \
             defib.report=http://10.0.2.2:8080/r/",
        );
        assert_eq!(a.ip.as_deref(), Some("10.0.2.15::10.0.2.2:255.255.255.0"));
        assert_eq!(a.bootif.as_deref(), Some("01-52-54-00-12-34-56"));
        assert_eq!(a.report_url.as_deref(), Some("http://10.0.2.2:8080/r/"));
        assert_eq!(BootArgs::parse("defib.report=").report_url, None);
        let a = BootArgs::parse("defib.store=http://10.0.2.2:8080/defib/store/");
        assert_eq!(
            a.store_url.as_deref(),
            Some("http://10.0.2.2:8080/defib/store/")
        );
        assert_eq!(BootArgs::parse("defib.store=").store_url, None);
    }

    #[test]
    fn the_tls_pin_is_read_and_a_bad_one_is_a_warning() {
        let hex = "ab".repeat(32);
        let a = BootArgs::parse(&format!("quiet defib.tls=sha256:{hex} defib.mode=scan"));
        assert_eq!(a.tls_pin, Some([0xab; 32]));
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);
        let a = BootArgs::parse("defib.tls=sha256:abcd");
        assert_eq!(a.tls_pin, None);
        assert!(
            a.warnings[0].contains("https:// URLs will not be trusted"),
            "{:?}",
            a.warnings
        );
    }

    #[test]
    fn keys_url_takes_http_with_an_ipv4_address_only() {
        let a = BootArgs::parse("defib.keys=http://10.0.2.2:8080/keys/");
        let u = a.keys_url.expect("parsed");
        assert_eq!(u.addr.to_string(), "10.0.2.2:8080");
        assert_eq!(u.path, "/keys/");
        assert!(u.is_folder());
        assert_eq!(u.url_of("abc"), "http://10.0.2.2:8080/keys/abc");
        let f = KeysUrl::parse("http://192.168.1.5/fleet/BitLockerKeys.csv").unwrap();
        assert_eq!(f.addr.port(), 80);
        assert!(!f.is_folder());
        assert_eq!(KeysUrl::parse("http://10.0.0.1").unwrap().path, "/");
        let t = KeysUrl::parse("https://10.0.0.1/keys/").unwrap();
        assert!(t.tls);
        assert_eq!(t.addr.port(), 443);
        assert_eq!(t.url_of("k"), "https://10.0.0.1/keys/k");
        assert!(!f.tls);
        for (bad, why) in [
            ("http://keys.example/keys/", "cannot resolve host names"),
            ("http://[::1]/keys/", "not an IPv4 address"),
            ("ftp://10.0.0.1/keys/", "not an http:// or https:// URL"),
            ("http://10.0.0.1:0/keys/", "bad port"),
            ("http://10.0.0.1:99999/keys/", "bad port"),
            ("http://10.0.0.1/keys/../etc/", "`..`"),
            ("http://10.0.0.1/keys/?id=1", "query"),
            ("http://user@10.0.0.1/keys/", "not an IPv4 address"),
        ] {
            let e = KeysUrl::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // A bad value is a warning that says so; the boot goes on.
        let a = BootArgs::parse("defib.keys=http://keys.example/");
        assert_eq!(a.keys_url, None);
        assert_eq!(a.warnings.len(), 1);
        assert!(
            a.warnings[0].contains("no keys over the network"),
            "{:?}",
            a.warnings
        );
    }

    #[test]
    fn rendered_args_parse_back() {
        for m in Mode::ALL {
            assert_eq!(BootArgs::parse(&m.arg()).mode, m);
        }
        assert_eq!(After::Reboot.arg(), None);
        let a = BootArgs::parse(&After::Poweroff.arg().unwrap());
        assert_eq!(a.after, After::Poweroff);
        for h in [MediumHint::Usb, MediumHint::Pxe, MediumHint::Cdrom] {
            assert_eq!(BootArgs::parse(&h.arg()).medium, Some(h));
        }
    }

    #[test]
    fn quotes_protect_spaces() {
        assert_eq!(
            split(r#"a "b c"=d e="f g" h"#),
            vec!["a", "b c=d", "e=f g", "h"]
        );
        let a = BootArgs::parse(r#"foo="x y" defib.mode="scan""#);
        assert_eq!(a.mode, Mode::Scan);
    }
}
