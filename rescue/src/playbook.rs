//! Incident playbooks: what a bad update did, how to recognise it on an
//! offline Windows volume, and what to do about it (docs/playbooks.md).
//!
//! This module is the data model and its validation. It does not touch a
//! volume: the engine evaluates playbooks against a Windows root.
//! Playbooks are untrusted input (an admin may write their own): parsing is
//! strict (`deny_unknown_fields`), errors carry the file and line, and
//! validation rejects anything the engine could misread.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::quarantine::Vendor;

/// The playbook format version this code reads.
pub const SCHEMA: u32 = 1;

/// One incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub schema: u32,
    /// Stable identifier, `[a-z0-9-]+`, e.g. `mcafee-dat-5958`.
    pub id: String,
    pub title: String,
    /// Day the bad update shipped, `YYYY-MM-DD`.
    pub date: String,
    /// Vendor advisories and articles.
    #[serde(default)]
    pub references: Vec<String>,
    /// What the technician reads on screen and in the report.
    #[serde(default)]
    pub summary: String,
    /// Which Windows installs it can apply to.
    #[serde(default)]
    pub applies: Applies,
    /// Conditions; all must hold for the actions to run.
    #[serde(default, rename = "when")]
    pub conditions: Vec<Condition>,
    /// Actions, in order.
    #[serde(default, rename = "action")]
    pub actions: Vec<Action>,
    /// Allow writing to a volume marked dirty (mounted with ntfs3 `force`).
    /// Off by default: a dirty volume is reported and left alone.
    #[serde(default)]
    pub allow_dirty: bool,
    /// Recognise and report only: the playbook has no actions, and when
    /// its conditions hold the result is *needs attention* with the
    /// summary as the reason. For incidents defib cannot repair offline
    /// (the damage is in files it cannot name or sources it cannot read);
    /// saying so beats a repair that guesses. Must be said explicitly, so a
    /// playbook that merely forgot its actions is still an error.
    #[serde(default)]
    pub detect_only: bool,
}

/// Windows versions a playbook applies to; absent fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applies {
    /// Inclusive range of `CurrentBuild` (2600 = XP, 7601 = 7 SP1,
    /// 19045 = 10 22H2, 22631 = 11 23H2).
    pub min_build: Option<u32>,
    pub max_build: Option<u32>,
    /// Architectures: `x86`, `x64`, `arm64`.
    #[serde(default)]
    pub arch: Vec<Arch>,
    /// `CSDVersion` values, e.g. `Service Pack 3` (compared without case).
    #[serde(default)]
    pub service_pack: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86,
    X64,
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86 => "x86",
            Arch::X64 => "x64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// One test of a file's content or metadata. Every field given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTest {
    /// Any of these SHA-256 digests (lowercase hex).
    #[serde(default)]
    pub sha256: Vec<String>,
    /// The file starts with these bytes: hex, spaces allowed
    /// (`"AA AA AA AA 01 00 23 01"`).
    pub leading_bytes: Option<String>,
    /// Last write time at or after this instant (RFC 3339, UTC).
    pub mtime_from: Option<String>,
    /// Last write time strictly before this instant.
    pub mtime_before: Option<String>,
    /// Exact size in bytes.
    pub size: Option<u64>,
}

/// A condition. Paths are relative to the volume root, `\` or `/`
/// separated, matched without case; `*` and `?` glob within one component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Condition {
    /// Holds when at least one file matches `glob` and passes the tests:
    /// any of `match_any` (or any file when empty) and none of `except_any`.
    /// The matched files can be named by actions through `id`.
    Files {
        id: String,
        glob: String,
        #[serde(default)]
        match_any: Vec<FileTest>,
        #[serde(default)]
        except_any: Vec<FileTest>,
    },
    /// Holds when no file exists at `path` (the damage a deletion did).
    Missing { id: String, path: String },
    /// Holds when no file matches `glob` and the tests (the same fields as
    /// `files`): the incident's file is gone.
    NoFiles {
        id: String,
        glob: String,
        #[serde(default)]
        match_any: Vec<FileTest>,
        #[serde(default)]
        except_any: Vec<FileTest>,
    },
    /// Holds when the BCD store's default boot entry has `safeboot` set
    /// (`safeboot = true`) or not set (`false`). No store found: does not
    /// hold; a store that cannot be read: an error, never a guess.
    Bcd { id: String, safeboot: bool },
    /// Holds when a registry value matches. `hive` is `SOFTWARE` or
    /// `SYSTEM` (from `Windows\System32\config`); `key` is below the hive
    /// root (`McAfee\AVEngine`). Strings compare without case; numbers by
    /// value (a REG_SZ holding digits compares as a number too).
    Registry {
        id: String,
        hive: Hive,
        key: String,
        value: String,
        /// Any of these values.
        #[serde(default)]
        equals: Vec<RegValue>,
        min: Option<u64>,
        max: Option<u64>,
    },
    /// Holds when an anti-virus quarantine holds a file whose original
    /// path matches `original` (a glob over the full Windows path, e.g.
    /// `*\system32\svchost.exe`) and, with `detection`, whose recorded
    /// detection name matches that glob. `vendor` is any vendor a
    /// quarantine source may name (`any` for every reader); the spelling
    /// `mcafee-bup` of the first version means `mcafee-vse`.
    Quarantine {
        id: String,
        #[serde(
            deserialize_with = "de_condition_vendor",
            serialize_with = "ser_vendor"
        )]
        vendor: Vendor,
        original: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detection: Option<String>,
    },
}

impl Condition {
    pub fn id(&self) -> &str {
        match self {
            Condition::Files { id, .. }
            | Condition::Missing { id, .. }
            | Condition::NoFiles { id, .. }
            | Condition::Bcd { id, .. }
            | Condition::Registry { id, .. }
            | Condition::Quarantine { id, .. } => id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Hive {
    Software,
    System,
}

/// A registry value to compare with: a string or a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RegValue {
    Number(u64),
    Text(String),
}

/// A quarantine condition's `vendor`: what [`parse_source_vendor`]
/// accepts, and `mcafee-bup`, this condition's spelling for McAfee
/// VirusScan `.bup` files before there was more than one reader.
fn de_condition_vendor<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vendor, D::Error> {
    let s = String::deserialize(d)?;
    if s == "mcafee-bup" {
        return Ok(Vendor::McafeeVse);
    }
    parse_source_vendor(&s).map_err(serde::de::Error::custom)
}

fn ser_vendor<S: serde::Serializer>(v: &Vendor, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(v.as_str())
}

/// Where a restore may take a good copy from, tried in the order given.
///
/// In TOML a source is a name (`"dllcache"`) or, for a vendor quarantine,
/// an inline table `{ quarantine = "avast", detection = "PSW.Banker*" }`.
/// Serde is written by hand (below) so that a misspelt name or vendor is
/// an error that lists the valid spellings, at the value's line and column,
/// instead of serde's "did not match any variant of untagged enum".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The McAfee VirusScan quarantine on the victim (`.bup` files).
    McafeeQuarantine,
    /// `Windows\System32\dllcache` (Windows File Protection, XP/2003).
    Dllcache,
    /// `Windows\ServicePackFiles\i386` (XP/2003 service pack sources).
    ServicePackFiles,
    /// The component store `Windows\WinSxS` (Vista and later).
    Winsxs,
    /// defib's known-good store (`payloads/store`).
    Store,
    /// A vendor's quarantine read by [`crate::quarantine`]: entries of
    /// `vendor` (or of every vendor we can read, for `any`) whose recorded
    /// original path is the file being restored and, when `detection` is
    /// given, whose vendor-recorded detection name matches that glob
    /// (without case).
    Quarantine {
        vendor: Vendor,
        detection: Option<String>,
    },
    /// A source that did not parse, kept so that [`Playbook::validate`]
    /// can report it at its own line and column (an error raised inside
    /// serde lands on the enclosing `[[action]]` instead). Never survives
    /// validation; `key` is the sub-key at fault (`quarantine`) or empty.
    #[doc(hidden)]
    Invalid { key: &'static str, msg: String },
}

/// The spellings of the named sources, in the order the docs list them.
const SOURCE_NAMES: [(&str, Source); 5] = [
    ("mcafee-quarantine", Source::McafeeQuarantine),
    ("dllcache", Source::Dllcache),
    ("service-pack-files", Source::ServicePackFiles),
    ("winsxs", Source::Winsxs),
    ("store", Source::Store),
];

/// Vendors a `quarantine = ...` source may name: those with a reader, and
/// `any`. Symantec and Sophos are in [`Vendor`] but have no reader (their
/// formats are not publicly described), so naming them is refused at load
/// rather than silently finding nothing on every run.
pub fn quarantine_source_vendors() -> Vec<Vendor> {
    Vendor::ALL
        .into_iter()
        .filter(|v| *v == Vendor::Any || crate::quarantine::reader_for(*v).is_some())
        .collect()
}

/// Parses a vendor as a playbook writes it. `avg` is accepted for
/// `avast`: AVG and Avast share one engine and one chest format, and a
/// playbook about an AVG incident should be able to say AVG.
pub fn parse_source_vendor(s: &str) -> std::result::Result<Vendor, String> {
    let ok = quarantine_source_vendors();
    let v = if s.eq_ignore_ascii_case("avg") {
        Some(Vendor::Avast)
    } else {
        ok.iter().copied().find(|v| v.as_str() == s)
    };
    v.ok_or_else(|| {
        let why = match s.to_ascii_lowercase().as_str() {
            "symantec" | "norton" | "sophos" => {
                " (defib has no reader for its quarantine: the format is not publicly described)"
            }
            _ => "",
        };
        let names: Vec<&str> = ok.iter().map(|v| v.as_str()).collect();
        format!(
            "unknown quarantine vendor {s:?}{why}; use one of: {}, avg (= avast)",
            names.join(", ")
        )
    })
}

impl Source {
    /// How the source is named in reports and docs.
    pub fn label(&self) -> String {
        match self {
            Source::Quarantine { vendor, detection } => match detection {
                Some(d) => format!("{vendor} quarantine (detection {d})"),
                None => format!("{vendor} quarantine"),
            },
            Source::Invalid { msg, .. } => format!("invalid source ({msg})"),
            named => SOURCE_NAMES
                .iter()
                .find(|(_, s)| s == named)
                .map(|(n, _)| n.to_string())
                .unwrap_or_default(),
        }
    }
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Source::Quarantine { vendor, detection } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("quarantine", vendor.as_str())?;
                if let Some(d) = detection {
                    m.serialize_entry("detection", d)?;
                }
                m.end()
            }
            named => s.serialize_str(&named.label()),
        }
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(SourceVisitor)
    }
}

struct SourceVisitor;

impl<'de> serde::de::Visitor<'de> for SourceVisitor {
    type Value = Source;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a source name (\"dllcache\", \"store\", ...) or a table { quarantine = \"<vendor>\", detection = \"<glob>\" }")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Source, E> {
        Ok(SOURCE_NAMES
            .iter()
            .find(|(n, _)| *n == v)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| {
                let names: Vec<&str> = SOURCE_NAMES.iter().map(|(n, _)| *n).collect();
                Source::Invalid {
                    key: "",
                    msg: format!(
                        "unknown source {v:?}; use one of: {}, or {{ quarantine = \"<vendor>\" }}",
                        names.join(", ")
                    ),
                }
            }))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Source, A::Error> {
        let mut vendor: Option<std::result::Result<Vendor, String>> = None;
        let mut detection: Option<String> = None;
        let mut bad: Option<Source> = None;
        while let Some(k) = map.next_key::<String>()? {
            match k.as_str() {
                "quarantine" => vendor = Some(parse_source_vendor(&map.next_value::<String>()?)),
                "detection" => detection = Some(map.next_value()?),
                other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    bad.get_or_insert(Source::Invalid {
                        key: "",
                        msg: format!(
                            "unknown key {other:?} in a source table; a quarantine source has `quarantine` (the vendor) and optionally `detection` (a glob over the detection name)"
                        ),
                    });
                }
            }
        }
        if let Some(b) = bad {
            return Ok(b);
        }
        Ok(match vendor {
            Some(Ok(vendor)) => Source::Quarantine { vendor, detection },
            Some(Err(msg)) => Source::Invalid {
                key: "quarantine",
                msg,
            },
            None => Source::Invalid {
                key: "",
                msg: "a source table needs `quarantine = \"<vendor>\"` (e.g. \"avg\", \"defender\", \"any\")".into(),
            },
        })
    }
}

/// An action. `id` lets a later action say `unless = "<id>"`: skip me when
/// that action changed something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// Move the files a `files` condition matched into the run's vault.
    Neutralize {
        id: Option<String>,
        /// The `files` condition whose matches to move.
        files: String,
        unless: Option<String>,
    },
    /// Put a verified good copy at `path` when the file there is missing
    /// (or is one a `files` condition matched), from the first source that
    /// has one for this Windows build and architecture.
    Restore {
        id: Option<String>,
        path: String,
        sources: Vec<Source>,
        unless: Option<String>,
    },
    /// Place a file from the known-good store at `path`. `name` is the
    /// store entry's name (e.g. an operator-supplied `EXTRA.DAT`).
    /// With `optional`, an absent store entry is reported, not an error.
    DropIn {
        id: Option<String>,
        path: String,
        name: String,
        #[serde(default)]
        optional: bool,
        unless: Option<String>,
    },
    /// Edit the BCD store: `clear = "safeboot"` removes the `safeboot`
    /// element of the default boot entry (docs/boot-health.md).
    Bcd {
        id: Option<String>,
        clear: BcdClear,
        unless: Option<String>,
    },
}

/// What a `bcd` action may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BcdClear {
    /// The default entry's `safeboot` element (`25000080`).
    Safeboot,
}

impl Action {
    pub fn id(&self) -> Option<&str> {
        match self {
            Action::Neutralize { id, .. }
            | Action::Restore { id, .. }
            | Action::DropIn { id, .. }
            | Action::Bcd { id, .. } => id.as_deref(),
        }
    }

    pub fn unless(&self) -> Option<&str> {
        match self {
            Action::Neutralize { unless, .. }
            | Action::Restore { unless, .. }
            | Action::DropIn { unless, .. }
            | Action::Bcd { unless, .. } => unless.as_deref(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Action::Neutralize { .. } => "neutralize",
            Action::Restore { .. } => "restore",
            Action::DropIn { .. } => "drop-in",
            Action::Bcd { .. } => "bcd",
        }
    }
}

/// Parses `leading_bytes`: pairs of hex digits (`0-9`, `a-f`, `A-F`),
/// optionally separated by spaces or tabs (`"AA AA 01"`, `"AAAA01"`).
///
/// Walked character by character, never sliced by byte offset, so any
/// UTF-8 is an error and never a panic; and digits are checked by hand,
/// because `u8::from_str_radix` accepts a sign (`"+A"` would be 0x0A).
pub fn parse_hex(s: &str) -> Result<Vec<u8>> {
    parse_hex_at(s).map_err(|(_, msg)| anyhow::anyhow!("{msg}"))
}

/// [`parse_hex`], with the 0-based character index the error is at.
fn parse_hex_at(s: &str) -> std::result::Result<Vec<u8>, (usize, String)> {
    let half = |at: usize| {
        (at, format!(
            "leading_bytes {s:?}: character {} starts a byte with one hex digit; write every byte as two digits, like \"0A\"",
            at + 1
        ))
    };
    let mut out = Vec::new();
    let mut high: Option<(usize, u8)> = None;
    let mut last = 0;
    for (i, c) in s.chars().enumerate() {
        last = i + 1;
        if c == ' ' || c == '\t' {
            if let Some((at, _)) = high {
                return Err(half(at));
            }
            continue;
        }
        let Some(d) = c.to_digit(16) else {
            return Err((i, format!(
                "leading_bytes {s:?}: character {} ({c:?}) is not a hex digit; use pairs of 0-9 and A-F, spaces between bytes",
                i + 1
            )));
        };
        // to_digit(16) is ASCII-only, so d < 16 here.
        match high.take() {
            None => high = Some((i, d as u8)),
            Some((_, h)) => out.push(h << 4 | d as u8),
        }
    }
    if let Some((at, _)) = high {
        return Err(half(at));
    }
    if out.is_empty() {
        return Err((last, format!("leading_bytes {s:?} holds no bytes")));
    }
    Ok(out)
}

/// A SHA-256 as the playbook writes it: 64 lowercase hex digits. Checked
/// byte by byte, so no multi-byte character and no sign can pass.
pub fn is_lower_sha256(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses an RFC 3339 instant to seconds since the epoch.
pub fn parse_instant(s: &str) -> Result<i64> {
    let t = humantime::parse_rfc3339(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 time like 2024-07-19T04:09:00Z"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0))
}

/// A Windows relative path as components, `\` or `/` separated. Rejects
/// absolute paths, drive letters and `..`: a playbook may not leave the
/// volume.
pub fn split_path(p: &str) -> Result<Vec<String>> {
    if p.contains(':') {
        bail!("{p:?}: drive letters and streams are not allowed; paths are relative to the volume root");
    }
    if p.starts_with(['\\', '/']) {
        bail!("{p:?}: paths are relative to the volume root; drop the leading separator");
    }
    let parts: Vec<String> = p
        .split(['\\', '/'])
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect();
    if parts.is_empty() {
        bail!("empty path");
    }
    if parts.iter().any(|c| c == "..") {
        bail!("{p:?}: '..' is not allowed");
    }
    Ok(parts)
}

impl Playbook {
    /// Parses and validates one playbook; `origin` names it in errors.
    /// TOML errors carry line and column.
    pub fn parse(text: &str, origin: &str) -> Result<Playbook> {
        let pb: Playbook = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            anyhow::anyhow!("{origin}:{line}:{col}: {}", e.message())
        })?;
        if let Err(e) = pb.validate() {
            // A value-level error names its key; point at the value in the
            // file, as TOML syntax errors do.
            if let Some(at) = e.downcast_ref::<At>() {
                if let Some(off) = at.offset_in(text) {
                    let (line, col) = line_col(text, off);
                    bail!("{origin}:{line}:{col}: {}", at.msg);
                }
            }
            return Err(e.context(format!("{origin}: invalid playbook")));
        }
        Ok(pb)
    }

    /// Checks what serde cannot: ids, references between conditions and
    /// actions, paths, hex, times.
    pub fn validate(&self) -> Result<()> {
        if self.schema != SCHEMA {
            bail!(
                "schema {} is not supported (this defib reads schema {SCHEMA})",
                self.schema
            );
        }
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !id_ok(&self.id) {
            return Err(At::error(
                "id",
                format!("id {:?}: use lowercase letters, digits and '-'", self.id),
            ));
        }
        if self.title.trim().is_empty() {
            bail!("title is empty");
        }
        // Only ASCII digits and '-' get as far as the time parser, so its
        // fixed byte offsets always land on the characters meant.
        let date_shape = self.date.len() == 10
            && self.date.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                _ => b.is_ascii_digit(),
            });
        if !date_shape || parse_instant(&format!("{}T00:00:00Z", self.date)).is_err() {
            return Err(At::error(
                "date",
                format!("date {:?}: use YYYY-MM-DD", self.date),
            ));
        }
        if let (Some(a), Some(b)) = (self.applies.min_build, self.applies.max_build) {
            if a > b {
                bail!("applies: min_build {a} is above max_build {b}");
            }
        }
        if self.conditions.is_empty() {
            bail!("no [[when]] conditions: a playbook must say how to recognise the damage");
        }
        let mut cond_ids: Vec<&str> = Vec::new();
        for (ci, c) in self.conditions.iter().enumerate() {
            let id = c.id();
            let here = |key: &str| format!("when.{ci}.{key}");
            if !id_ok(id) {
                return Err(At::error(
                    here("id"),
                    format!("condition id {id:?}: use lowercase letters, digits and '-'"),
                ));
            }
            if cond_ids.contains(&id) {
                return Err(At::error(
                    here("id"),
                    format!("condition id {id:?} is used twice"),
                ));
            }
            cond_ids.push(id);
            match c {
                Condition::Files {
                    glob,
                    match_any,
                    except_any,
                    ..
                }
                | Condition::NoFiles {
                    glob,
                    match_any,
                    except_any,
                    ..
                } => {
                    split_path(glob).map_err(|e| {
                        At::error(here("glob"), format!("condition {id}: glob {e}"))
                    })?;
                    for (list, tests) in [("match_any", match_any), ("except_any", except_any)] {
                        for (ti, t) in tests.iter().enumerate() {
                            t.validate_at(&format!("when.{ci}.{list}.{ti}"), id)?;
                        }
                    }
                }
                Condition::Missing { path, .. } => {
                    let parts = split_path(path).map_err(|e| {
                        At::error(here("path"), format!("condition {id}: path {e}"))
                    })?;
                    if parts.iter().any(|p| p.contains(['*', '?'])) {
                        return Err(At::error(
                            here("path"),
                            format!("condition {id}: a missing-file path cannot have wildcards"),
                        ));
                    }
                }
                Condition::Registry {
                    key,
                    value,
                    equals,
                    min,
                    max,
                    ..
                } => {
                    if key.trim().is_empty()
                        || value.is_empty() && equals.is_empty() && min.is_none() && max.is_none()
                    {
                        bail!("condition {id}: registry needs a key, a value and equals/min/max");
                    }
                    if equals.is_empty() && min.is_none() && max.is_none() {
                        bail!("condition {id}: registry needs equals, min or max");
                    }
                }
                Condition::Quarantine {
                    original,
                    detection,
                    ..
                } => {
                    if original.trim().is_empty() {
                        bail!("condition {id}: quarantine needs an original path glob");
                    }
                    if detection.as_deref().is_some_and(|d| d.trim().is_empty()) {
                        bail!("condition {id}: an empty detection glob matches nothing; leave it out to match any detection");
                    }
                }
                Condition::Bcd { .. } => {}
            }
        }
        let mut action_ids: Vec<&str> = Vec::new();
        for (i, a) in self.actions.iter().enumerate() {
            let n = i + 1;
            let here = |key: &str| format!("action.{i}.{key}");
            if let Some(u) = a.unless() {
                if !action_ids.contains(&u) {
                    bail!("action {n}: unless = {u:?} names no earlier action");
                }
            }
            if let Some(id) = a.id() {
                if !id_ok(id) || action_ids.contains(&id) {
                    bail!("action {n}: id {id:?} is invalid or used twice");
                }
                action_ids.push(id);
            }
            match a {
                Action::Neutralize { files, .. } => {
                    let ok = self
                        .conditions
                        .iter()
                        .any(|c| matches!(c, Condition::Files { id, .. } if id == files));
                    if !ok {
                        bail!(
                            "action {n}: neutralize files = {files:?} names no `files` condition"
                        );
                    }
                }
                Action::Restore { path, sources, .. } => {
                    let parts = split_path(path)
                        .map_err(|e| At::error(here("path"), format!("action {n}: path {e}")))?;
                    if parts.iter().any(|p| p.contains(['*', '?'])) {
                        return Err(At::error(
                            here("path"),
                            format!("action {n}: a restore path cannot have wildcards"),
                        ));
                    }
                    if sources.is_empty() {
                        bail!("action {n}: restore needs at least one source");
                    }
                    for (si, s) in sources.iter().enumerate() {
                        if let Source::Invalid { key, msg } = s {
                            let at = if key.is_empty() {
                                format!("action.{i}.sources.{si}")
                            } else {
                                format!("action.{i}.sources.{si}.{key}")
                            };
                            return Err(At::error(at, format!("action {n}: {msg}")));
                        }
                        if let Source::Quarantine {
                            detection: Some(d), ..
                        } = s
                        {
                            // A blank glob would match nothing a vendor records;
                            // `/` is allowed: Defender and McAfee names hold
                            // it (Trojan:Win32/Wacatac.B!ml, W32/Wecorl.a).
                            if d.trim().is_empty() {
                                return Err(At::error(
                                    format!("action.{i}.sources.{si}.detection"),
                                    format!("action {n}: detection {d:?} is blank: give a glob over the vendor's detection name, like \"PSW.Banker*\", or leave detection out"),
                                ));
                            }
                        }
                    }
                }
                Action::DropIn { path, name, .. } => {
                    let parts = split_path(path)
                        .map_err(|e| At::error(here("path"), format!("action {n}: path {e}")))?;
                    if parts.iter().any(|p| p.contains(['*', '?'])) {
                        return Err(At::error(
                            here("path"),
                            format!("action {n}: a drop-in path cannot have wildcards"),
                        ));
                    }
                    if name.trim().is_empty() {
                        bail!("action {n}: drop-in needs a store entry name");
                    }
                }
                Action::Bcd { .. } => {}
            }
        }
        if self.detect_only && !self.actions.is_empty() {
            return Err(At::error(
                "detect_only",
                "detect_only = true, but the playbook has [[action]]s; remove one or the other"
                    .into(),
            ));
        }
        if self.detect_only && self.summary.trim().is_empty() {
            bail!(
                "a detect_only playbook needs a summary: it is what the technician is told to do"
            );
        }
        if self.actions.is_empty() && !self.detect_only {
            bail!("no [[action]]: a playbook must say what to do (or set detect_only = true if defib can only recognise this incident)");
        }
        Ok(())
    }
}

impl FileTest {
    /// Checks one test; `key` is where it sits (`when.0.match_any.1`) and
    /// `cond` the condition's id, for the message.
    fn validate_at(&self, key: &str, cond: &str) -> Result<()> {
        for (i, h) in self.sha256.iter().enumerate() {
            if !is_lower_sha256(h) {
                return Err(At::error(
                    format!("{key}.sha256.{i}"),
                    format!("condition {cond}: sha256 {h:?}: write 64 lowercase hex digits"),
                ));
            }
        }
        if let Some(b) = &self.leading_bytes {
            if let Err((ch, msg)) = parse_hex_at(b) {
                return Err(At::error_at_char(
                    format!("{key}.leading_bytes"),
                    format!("condition {cond}: {msg}"),
                    ch,
                ));
            }
        }
        for (name, t) in [
            ("mtime_from", &self.mtime_from),
            ("mtime_before", &self.mtime_before),
        ] {
            if let Some(t) = t {
                if let Err(e) = parse_instant(t) {
                    return Err(At::error(
                        format!("{key}.{name}"),
                        format!("condition {cond}: {name} {e:#}"),
                    ));
                }
            }
        }
        if self == &FileTest::default() {
            return Err(At::error(
                key.to_string(),
                format!("condition {cond}: an empty file test matches everything; give at least one field"),
            ));
        }
        Ok(())
    }
}

/// A validation error about one value: `key` is its place in the TOML
/// document (`when.0.match_any.1.leading_bytes`, array items by index),
/// which [`Playbook::parse`] turns into a line and column. Carried inside
/// `anyhow::Error` so `validate` keeps its plain signature.
#[derive(Debug)]
struct At {
    key: String,
    msg: String,
    /// 0-based character index inside a string value, when the error is
    /// about one character of it.
    char_in_value: Option<usize>,
}

impl At {
    fn error(key: impl Into<String>, msg: String) -> anyhow::Error {
        anyhow::Error::new(At {
            key: key.into(),
            msg,
            char_in_value: None,
        })
    }

    /// An error about character `ch` (0-based) of a string value.
    fn error_at_char(key: String, msg: String, ch: usize) -> anyhow::Error {
        anyhow::Error::new(At {
            key,
            msg,
            char_in_value: Some(ch),
        })
    }

    /// Byte offset in `text` of the value this error is about, or of the
    /// offending character inside it when the string holds no escapes (so
    /// source characters and value characters line up).
    fn offset_in(&self, text: &str) -> Option<usize> {
        let doc = toml::de::DeTable::parse(text).ok()?;
        let mut span = doc.span();
        let mut cur: Option<&toml::de::DeValue> = None;
        let mut table = Some(doc.get_ref());
        for part in self.key.split('.') {
            let next = match (table, cur) {
                (Some(t), _) => t.iter().find(|(k, _)| k.get_ref() == part).map(|(_, v)| v),
                (None, Some(toml::de::DeValue::Array(a))) => a.get(part.parse::<usize>().ok()?),
                _ => None,
            }?;
            span = next.span();
            cur = Some(next.get_ref());
            table = match next.get_ref() {
                toml::de::DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        let Some(ch) = self.char_in_value else {
            return Some(span.start);
        };
        // Point inside only a one-line string without escapes; otherwise
        // (an escape, or a multi-line string whose first newline is
        // trimmed) keep the value's start rather than guess.
        let raw = text.get(span.clone())?;
        let inner = raw
            .strip_prefix('\'')
            .or_else(|| raw.strip_prefix('"').filter(|b| !b.contains('\\')))
            .filter(|body| !body.starts_with(['\'', '"']))
            .and_then(|body| body.char_indices().nth(ch))
            .map(|(i, _)| 1 + i)
            .unwrap_or(0);
        Some(span.start + inner)
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for At {}

/// 1-based line and column (in characters) of byte `offset`. An offset
/// inside a character or past the end is moved back to a boundary, so a
/// position never panics.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Loads every `*.toml` under `dir`, sorted by file name. Two playbooks
/// with one id are an error.
pub fn load_dir(dir: &Path) -> Result<Vec<Playbook>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let mut out: Vec<Playbook> = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let pb = Playbook::parse(&text, &p.display().to_string())?;
        if out.iter().any(|o| o.id == pb.id) {
            bail!(
                "{}: playbook id {:?} is used by another playbook",
                p.display(),
                pb.id
            );
        }
        out.push(pb);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads/playbooks")
    }

    #[test]
    fn bcd_and_no_files_parse_and_bad_values_are_refused() {
        let pbs = load_dir(&shipped()).unwrap();
        let sm = pbs
            .iter()
            .find(|p| p.id == "crowdstrike-safe-mode")
            .unwrap();
        assert!(matches!(
            sm.conditions[2],
            Condition::Bcd { safeboot: true, .. }
        ));
        assert!(matches!(sm.conditions[1], Condition::NoFiles { .. }));
        assert!(matches!(
            sm.actions[0],
            Action::Bcd {
                clear: BcdClear::Safeboot,
                ..
            }
        ));
        let text = std::fs::read_to_string(shipped().join("crowdstrike-safe-mode.toml")).unwrap();
        let bad = text.replace(r#"clear = "safeboot""#, r#"clear = "everything""#);
        let e = format!("{:#}", Playbook::parse(&bad, "pb.toml").unwrap_err());
        assert!(e.contains("pb.toml") && e.contains("everything"), "{e}");
        let bad = text.replace("safeboot = true", r#"safeboot = "yes""#);
        assert!(Playbook::parse(&bad, "pb.toml").is_err());
    }

    #[test]
    fn shipped_playbooks_are_valid() {
        let pbs = load_dir(&shipped()).unwrap();
        let ids: Vec<&str> = pbs.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "avg-user32-2008",
                "bitdefender-fakealert5-2010",
                "crowdstrike-c00000291",
                // after the file playbook: it clears Safe Mode once the
                // file is gone, in the same run
                "crowdstrike-safe-mode",
                "mcafee-dat-5958",
                // sorted by file name: '-' sorts before '.'
                "sophos-shh-updater-b-2012-x64",
                "sophos-shh-updater-b-2012",
                "symantec-haxdoor-2007",
                "webroot-w32-trojan-gen-2017",
            ]
        );
        let by = |id: &str| pbs.iter().find(|p| p.id == id).unwrap();
        let cs = by("crowdstrike-c00000291");
        let Condition::Files {
            match_any,
            except_any,
            ..
        } = &cs.conditions[0]
        else {
            panic!()
        };
        assert_eq!(
            parse_hex(match_any[0].leading_bytes.as_ref().unwrap()).unwrap(),
            [0xAA, 0xAA, 0xAA, 0xAA, 1, 0, 0x23, 1]
        );
        assert_eq!(
            except_any[0].mtime_from.as_deref(),
            Some("2024-07-19T05:27:00Z")
        );
        let mc = by("mcafee-dat-5958");
        assert_eq!(mc.applies.arch, [Arch::X86]);
        assert!(
            matches!(mc.actions.last(), Some(Action::Restore { sources, .. }) if sources[0] == Source::McafeeQuarantine && sources.contains(&Source::Store))
        );
    }

    /// Every shipped playbook says where its facts come from and how to
    /// recognise the damage: an incident playbook without references is a
    /// rumour, and one without conditions would act on every machine.
    #[test]
    fn every_shipped_playbook_has_references_and_conditions() {
        let pbs = load_dir(&shipped()).unwrap();
        assert!(pbs.len() >= 8, "{}", pbs.len());
        for pb in &pbs {
            assert!(!pb.references.is_empty(), "{}: no references", pb.id);
            assert!(
                pb.references.iter().all(|r| !r.trim().is_empty()),
                "{}: a blank reference",
                pb.id
            );
            assert!(!pb.conditions.is_empty(), "{}: no conditions", pb.id);
            assert!(!pb.summary.trim().is_empty(), "{}: no summary", pb.id);
            assert!(
                pb.detect_only == pb.actions.is_empty(),
                "{}: actions only when not detect_only",
                pb.id
            );
        }
        // The AVG playbook restores from AVG's quarantine first, by the
        // incident's detection name, then from Windows' own copies.
        let avg = pbs.iter().find(|p| p.id == "avg-user32-2008").unwrap();
        let Some(Action::Restore { sources, .. }) = avg.actions.first() else {
            panic!("{avg:?}")
        };
        assert_eq!(
            sources[0],
            Source::Quarantine {
                vendor: Vendor::Avast,
                detection: Some("*PSW.Banker4.APSA*".into())
            }
        );
        assert!(sources.contains(&Source::Dllcache) && sources.contains(&Source::Store));
    }

    /// A restore with the given sources list (TOML), appended to GOOD.
    fn with_sources(list: &str) -> String {
        format!("{GOOD}[[action]]\nkind = \"restore\"\npath = 'a\\b.dll'\nsources = {list}\n")
    }

    #[test]
    fn quarantine_sources_parse_next_to_named_ones() {
        let pb = Playbook::parse(
            &with_sources(
                r#"["mcafee-quarantine", { quarantine = "avast", detection = "PSW.Banker*" }, { quarantine = "any" }, { quarantine = "AVG" }, "dllcache", "service-pack-files", "winsxs", "store"]"#,
            ),
            "pb.toml",
        )
        .unwrap();
        let Action::Restore { sources, .. } = &pb.actions[1] else {
            panic!()
        };
        assert_eq!(
            sources,
            &[
                Source::McafeeQuarantine,
                Source::Quarantine {
                    vendor: Vendor::Avast,
                    detection: Some("PSW.Banker*".into())
                },
                Source::Quarantine {
                    vendor: Vendor::Any,
                    detection: None
                },
                Source::Quarantine {
                    vendor: Vendor::Avast,
                    detection: None
                },
                Source::Dllcache,
                Source::ServicePackFiles,
                Source::Winsxs,
                Source::Store,
            ]
        );
        // Round trip through serde keeps the spellings.
        let json = serde_json::to_string(sources).unwrap();
        assert!(
            json.contains(r#""mcafee-quarantine""#)
                && json.contains(r#"{"quarantine":"avast","detection":"PSW.Banker*"}"#),
            "{json}"
        );
    }

    #[test]
    fn bad_quarantine_sources_name_file_line_and_column() {
        // GOOD is 12 lines and the restore adds 4: sources is line 16,
        // and `sources = [{ quarantine = "` is 27 characters.
        let e = err(&with_sources(r#"[{ quarantine = "nortn" }]"#));
        assert!(e.starts_with("pb.toml:16:27: "), "{e}");
        assert!(
            e.contains("unknown quarantine vendor \"nortn\"")
                && e.contains("avast")
                && e.contains("defender")
                && e.contains("any"),
            "{e}"
        );
        let e = err(&with_sources(r#"[{ quarantine = "symantec" }]"#));
        assert!(e.contains("no reader"), "{e}");
        let e = err(&with_sources(r#"[{ detection = "x" }]"#));
        assert!(
            e.starts_with("pb.toml:16:") && e.contains("needs `quarantine"),
            "{e}"
        );
        let e = err(&with_sources(r#"[{ quarantine = "any", path = "x" }]"#));
        assert!(e.contains("unknown key \"path\""), "{e}");
        let e = err(&with_sources(r#"["dllcach"]"#));
        assert!(
            e.starts_with("pb.toml:16:12: ") && e.contains("dllcache, service-pack-files"),
            "{e}"
        );
        let e = err(&with_sources(
            r#"[{ quarantine = "any", detection = ' ' }]"#,
        ));
        assert!(
            e.starts_with("pb.toml:16:") && e.contains("is blank"),
            "{e}"
        );
        // Vendors' names hold '/': accepted.
        Playbook::parse(
            &with_sources(r#"[{ quarantine = "defender", detection = "Trojan:Win32/*" }]"#),
            "pb.toml",
        )
        .unwrap();
    }

    #[test]
    fn detect_only_playbooks_have_no_actions_and_a_summary() {
        let bare = GOOD.replace("[[action]]\nkind = \"neutralize\"\nfiles = \"bad\"\n", "");
        let ok = bare.replace(
            "date = \"2024-07-19\"",
            "date = \"2024-07-19\"\ndetect_only = true\nsummary = \"do X\"",
        );
        Playbook::parse(&ok, "pb.toml").unwrap();
        let e = err(&bare.replace(
            "date = \"2024-07-19\"",
            "date = \"2024-07-19\"\ndetect_only = true",
        ));
        assert!(e.contains("needs a summary"), "{e}");
        let e = err(&GOOD.replace(
            "date = \"2024-07-19\"",
            "date = \"2024-07-19\"\ndetect_only = true\nsummary = \"x\"",
        ));
        assert!(e.contains("remove one or the other"), "{e}");
        let e = err(&bare);
        assert!(e.contains("detect_only"), "{e}");
    }

    const GOOD: &str = r#"
schema = 1
id = "x"
title = "t"
date = "2024-07-19"
[[when]]
kind = "files"
id = "bad"
glob = 'Windows\a\*.sys'
[[action]]
kind = "neutralize"
files = "bad"
"#;

    fn err(text: &str) -> String {
        format!("{:#}", Playbook::parse(text, "pb.toml").unwrap_err())
    }

    #[test]
    fn minimal_playbook_parses() {
        Playbook::parse(GOOD, "pb.toml").unwrap();
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = err("schema = 1\nid = \"x\"\ntitle = \n");
        assert!(e.starts_with("pb.toml:3:"), "{e}");
        let e = err(&GOOD.replace("kind = \"neutralize\"", "kind = \"delete\""));
        assert!(e.starts_with("pb.toml:"), "{e}");
        let e = err(&GOOD.replace("title = \"t\"", "title = \"t\"\ncolour = \"red\""));
        assert!(e.contains("colour") && e.starts_with("pb.toml:5:"), "{e}");
    }

    #[test]
    fn semantic_errors_are_explained() {
        let cases = [
            (GOOD.replace("schema = 1", "schema = 2"), "schema 2"),
            (GOOD.replace("id = \"x\"", "id = \"X Y\""), "lowercase"),
            (GOOD.replace("2024-07-19", "19/07/2024"), "YYYY-MM-DD"),
            (GOOD.replace("files = \"bad\"", "files = \"nope\""), "names no `files` condition"),
            (GOOD.replace(r"glob = 'Windows\a\*.sys'", r"glob = 'C:\Windows\a.sys'"), "drive letters"),
            (GOOD.replace(r"glob = 'Windows\a\*.sys'", r"glob = 'Windows\..\..\etc'"), "'..'"),
            (GOOD.replace(r"glob = 'Windows\a\*.sys'", r"glob = '\Windows\a'"), "relative to the volume root"),
            (GOOD.replace("[[action]]\nkind = \"neutralize\"\nfiles = \"bad\"\n", ""), "no [[action]]"),
            (GOOD.replace("glob = 'Windows\\a\\*.sys'", "glob = 'a'\nmatch_any = [{}]"), "empty file test"),
            (GOOD.replace("glob = 'Windows\\a\\*.sys'", "glob = 'a'\nmatch_any = [{ leading_bytes = \"ZZ\" }]"), "not a hex digit"),
            (GOOD.replace("glob = 'Windows\\a\\*.sys'", "glob = 'a'\nmatch_any = [{ mtime_from = \"yesterday\" }]"), "RFC 3339"),
            (GOOD.replace("files = \"bad\"", "files = \"bad\"\nunless = \"later\""), "names no earlier action"),
            (format!("{GOOD}[[action]]\nkind = \"restore\"\npath = 'a\\*.exe'\nsources = [\"store\"]\n"), "wildcards"),
            (format!("{GOOD}[[action]]\nkind = \"restore\"\npath = 'a\\b.exe'\nsources = []\n"), "at least one source"),
            (format!("{GOOD}[[when]]\nkind = \"missing\"\nid = \"bad\"\npath = 'a'\n"), "used twice"),
            (format!("{GOOD}[applies]\nmin_build = 9\nmax_build = 2\n"), "above max_build"),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "expected {want:?} in: {e}");
        }
    }

    #[test]
    fn duplicate_ids_across_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.toml"), GOOD).unwrap();
        std::fs::write(d.path().join("b.toml"), GOOD).unwrap();
        let e = format!("{:#}", load_dir(d.path()).unwrap_err());
        assert!(
            e.contains("b.toml") && e.contains("used by another playbook"),
            "{e}"
        );
    }

    /// The `files` condition of GOOD with one file test.
    fn with_test(test: &str) -> String {
        GOOD.replace(
            "glob = 'Windows\\a\\*.sys'",
            &format!("glob = 'a'\nmatch_any = [{{ {test} }}]"),
        )
    }

    #[test]
    fn leading_bytes_with_non_ascii_is_an_error_not_a_panic() {
        // 'é' is two bytes: the old parser sliced `compact[i..i + 2]` by
        // byte offset and panicked inside the character.
        for bad in [
            "é",
            "Aé",
            "AAé0",
            "ÿÿ",
            "A\u{300}",
            "\u{1F600}A",
            "AA\u{a0}01",
        ] {
            assert!(parse_hex(bad).is_err(), "{bad:?}");
            let e = err(&with_test(&format!("leading_bytes = '{bad}'")));
            assert!(e.contains("not a hex digit"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn leading_bytes_with_a_sign_is_refused() {
        // u8::from_str_radix("+A", 16) is Ok(10): a sign is not a digit.
        for bad in ["+A", "-1", "+0 01", "AA +A"] {
            assert!(parse_hex(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn leading_bytes_are_pairs_of_hex_digits() {
        assert_eq!(parse_hex("AA aa 01").unwrap(), [0xAA, 0xAA, 1]);
        assert_eq!(parse_hex("AAaa01").unwrap(), [0xAA, 0xAA, 1]);
        assert_eq!(parse_hex(" 0f\t10 ").unwrap(), [0x0F, 0x10]);
        for bad in ["", "   ", "A", "A AA", "AAA", "0x41", "AA\n01"] {
            assert!(parse_hex(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn bad_leading_bytes_error_names_file_line_and_column() {
        // Line 10 is the match_any line; 'match_any = [{ leading_bytes = "'
        // is 32 characters, so the value starts at column 33 and its 4th
        // character, 'é', is at column 36.
        let e = err(&with_test("leading_bytes = \"AA é0\""));
        assert!(e.starts_with("pb.toml:10:36: "), "{e}");
        assert!(e.contains("character 4 ('é')"), "{e}");
        let e = err(&with_test("leading_bytes = \"+A\""));
        assert!(e.starts_with("pb.toml:10:33: "), "{e}");
        // With a TOML escape the characters no longer line up: the
        // column is the value's opening quote.
        let e = err(&with_test("leading_bytes = \"AA \\u00e9\""));
        assert!(e.starts_with("pb.toml:10:32: "), "{e}");
    }

    #[test]
    fn bad_sha256_and_instants_name_file_line_and_column() {
        let long = "é".repeat(32); // 64 bytes, 32 characters
        let e = err(&with_test(&format!(
            "sha256 = [\"{}\", \"{long}\"]",
            "0".repeat(64)
        )));
        assert!(
            e.starts_with("pb.toml:10:") && e.contains("64 lowercase hex"),
            "{e}"
        );
        let e = err(&with_test(&format!("sha256 = [\"+{}\"]", "0".repeat(63))));
        assert!(e.contains("64 lowercase hex"), "{e}");
        for bad in [
            "2024-07-19T04:09:0é",
            "+024-07-19T04:09:00Z",
            "é",
            "2024-07-19T04:09:00.é",
        ] {
            let e = err(&with_test(&format!("mtime_from = '{bad}'")));
            assert!(
                e.starts_with("pb.toml:10:") && e.contains("RFC 3339"),
                "{bad:?}: {e}"
            );
        }
        for bad in ["2024-07-1é", "+024-07-19", "2024-+7-19", "２０２４-07-19"] {
            let e = err(&GOOD.replace("2024-07-19", bad));
            assert!(
                e.starts_with("pb.toml:5:8: ") && e.contains("YYYY-MM-DD"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn bad_paths_name_file_line_and_column() {
        let e = err(&GOOD.replace(r"glob = 'Windows\a\*.sys'", r"glob = 'C:\é\a.sys'"));
        assert!(
            e.starts_with("pb.toml:9:8: ") && e.contains("drive letters"),
            "{e}"
        );
    }

    #[test]
    fn line_col_never_panics_inside_a_character() {
        let t = "a\néé";
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 4), (2, 2));
        assert_eq!(line_col(t, 99), (2, 3));
    }

    #[test]
    fn paths_split_both_ways() {
        assert_eq!(
            split_path(r"Windows/System32\x.sys").unwrap(),
            ["Windows", "System32", "x.sys"]
        );
        assert!(split_path("").is_err());
    }
}
