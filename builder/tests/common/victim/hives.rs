//! Registry hives for victims, merged into an empty Windows-written hive
//! with hivexregedit.

#![allow(unused_imports)]

use super::*;

/// A registry value in a fixture hive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegVal {
    Sz(String),
    Dword(u32),
    /// REG_BINARY (how BCD stores integers and booleans).
    Bin(Vec<u8>),
}

/// Keys (relative to the hive root) with their values.
pub type HiveSpec = Vec<(String, Vec<(String, RegVal)>)>;

pub(super) fn key(path: &str, vals: &[(&str, RegVal)]) -> (String, Vec<(String, RegVal)>) {
    (
        path.to_string(),
        vals.iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect(),
    )
}
pub(super) fn sz(s: &str) -> RegVal {
    RegVal::Sz(s.to_string())
}

/// The XP SOFTWARE hive's values. Like a real XP, `CurrentBuild` holds
/// the obsolete "1.511.1 ..." string: the build is `CurrentBuildNumber`.
pub fn xp_software() -> HiveSpec {
    vec![
        key(
            r"Microsoft\Windows NT\CurrentVersion",
            &[
                ("ProductName", sz("Microsoft Windows XP")),
                ("CurrentVersion", sz("5.1")),
                ("CurrentBuildNumber", sz("2600")),
                (
                    "CurrentBuild",
                    sz("1.511.1 () (Obsolete data - do not use)"),
                ),
                ("CSDVersion", sz("Service Pack 3")),
                ("BuildLab", sz("2600.xpsp.080413-2111")),
                ("CurrentType", sz("Uniprocessor Free")),
                ("SystemRoot", sz(r"C:\WINDOWS")),
                ("RegisteredOrganization", sz("St. Example Hospital")),
                ("InstallDate", RegVal::Dword(1_215_000_000)),
            ],
        ),
        key(
            r"McAfee\AVEngine",
            &[
                ("AVDatVersion", RegVal::Dword(5958)),
                ("AVDatDate", sz("2010/04/21")),
                ("EngineVersionMajor", RegVal::Dword(5400)),
                ("EngineVersionMinor", RegVal::Dword(1158)),
                ("DAT", sz(r"C:\Program Files\Common Files\McAfee\Engine")),
            ],
        ),
    ]
}

/// The Windows 10 22H2 SOFTWARE hive's values.
pub fn win10_software() -> HiveSpec {
    vec![key(
        r"Microsoft\Windows NT\CurrentVersion",
        &[
            ("ProductName", sz("Windows 10 Pro")),
            ("EditionID", sz("Professional")),
            ("InstallationType", sz("Client")),
            ("CurrentVersion", sz("6.3")),
            ("CurrentMajorVersionNumber", RegVal::Dword(10)),
            ("CurrentMinorVersionNumber", RegVal::Dword(0)),
            ("CurrentBuild", sz("19045")),
            ("CurrentBuildNumber", sz("19045")),
            ("UBR", RegVal::Dword(4651)),
            ("DisplayVersion", sz("22H2")),
            ("ReleaseId", sz("2009")),
            ("BuildLab", sz("19041.vb_release.191206-1406")),
            ("SystemRoot", sz(r"C:\Windows")),
        ],
    )]
}

/// A SYSTEM hive: Select (current = 1, last known good = 2) and two
/// control sets naming the same computer.
pub fn system_hive(computer: &str, processor_arch: &str) -> HiveSpec {
    let mut v = vec![key(
        "Select",
        &[
            ("Current", RegVal::Dword(1)),
            ("Default", RegVal::Dword(1)),
            ("Failed", RegVal::Dword(0)),
            ("LastKnownGood", RegVal::Dword(2)),
        ],
    )];
    for set in ["ControlSet001", "ControlSet002"] {
        v.push(key(
            &format!(r"{set}\Control\ComputerName\ComputerName"),
            &[("ComputerName", sz(computer))],
        ));
        v.push(key(
            &format!(r"{set}\Control\Session Manager\Environment"),
            &[("PROCESSOR_ARCHITECTURE", sz(processor_arch))],
        ));
    }
    v
}

/// The path of the empty hive written by Windows (shared corpora).
pub fn empty_hive() -> Result<PathBuf> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora/registry/yarp-EmptyHive");
    if !p.is_file() {
        bail!(
            "{} is missing: the shared corpora must sit beside the project (../shared/corpora)",
            p.display()
        );
    }
    Ok(p)
}

/// Builds a hive: a copy of the empty Windows hive with `spec` merged in by
/// hivexregedit under `HKEY_LOCAL_MACHINE\<name>`.
pub(super) fn hive(name: &str, spec: &HiveSpec) -> Result<Vec<u8>> {
    let tool = tool("hivexregedit", "libwin-hivex-perl")?;
    let work = tempfile::tempdir().context("scratch folder for a hive")?;
    let h = work.path().join(name);
    fs::copy(empty_hive()?, &h).context("copying the empty hive")?;
    let mut perm = fs::metadata(&h)?.permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&h, perm)?;
    let prefix = format!(r"HKEY_LOCAL_MACHINE\{name}");
    let reg = work.path().join(format!("{name}.reg"));
    fs::write(&reg, reg_text(&prefix, spec))?;
    run(Command::new(tool)
        .arg("--merge")
        .arg("--prefix")
        .arg(&prefix)
        .arg(&h)
        .arg(&reg))
    .with_context(|| format!("merging the {name} hive"))?;
    Ok(fs::read(&h)?)
}

/// A .reg file (UTF-8, LF: what hivexregedit reads) creating every parent
/// key before its children.
pub(super) fn reg_text(prefix: &str, spec: &HiveSpec) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from("Windows Registry Editor Version 5.00\n\n");
    let mut made: Vec<String> = Vec::new();
    for (k, vals) in spec {
        let parts: Vec<&str> = k.split('\\').collect();
        for i in 1..=parts.len() {
            let p = parts[..i].join("\\");
            if !made.contains(&p) {
                out.push_str(&format!("[{prefix}\\{p}]\n"));
                if i == parts.len() {
                    for (n, v) in vals {
                        match v {
                            RegVal::Sz(s) => {
                                out.push_str(&format!("\"{}\"=\"{}\"\n", esc(n), esc(s)))
                            }
                            RegVal::Dword(d) => {
                                out.push_str(&format!("\"{}\"=dword:{d:08x}\n", esc(n)))
                            }
                            RegVal::Bin(b) => {
                                let hex: Vec<String> =
                                    b.iter().map(|x| format!("{x:02x}")).collect();
                                out.push_str(&format!("\"{}\"=hex:{}\n", esc(n), hex.join(",")))
                            }
                        }
                    }
                }
                out.push('\n');
                made.push(p);
            }
        }
    }
    out
}
