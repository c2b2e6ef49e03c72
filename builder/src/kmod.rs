//! The kernel-module closure: which `.ko.xz` files go into the initramfs and
//! in what order the rescue loads them.
//!
//! Debian's kernel package ships no `modules.dep` (depmod runs at install
//! time), so we compute the closure ourselves from each module's `.modinfo`
//! ELF section (`depends=` and `softdep=pre:` keys, see modinfo(8)) and the
//! package's `modules.builtin`. The initramfs stores them decompressed
//! (`stored`): Debian signs a module before compressing it, so the `.ko`
//! still ends in its signature, which Secure Boot lockdown requires, and
//! the kernel no longer decompresses each one at boot (the rescue also
//! loads `.ko.xz`, with `MODULE_INIT_COMPRESSED_FILE`).
//!
//! Each module's device aliases (`alias=` in `.modinfo`) go into
//! `defib.alias` beside the load order, so the rescue loads only what the
//! machine's devices need (see docs/architecture.md, "Loading by hardware");
//! the groups the list names in `always` are loaded on every machine.
//!
//! This is not depmod: no symbol versions, no firmware lists, no
//! `modules.alias` in kmod's format (the rescue reads ours).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

/// The curated list shipped with the builder (`builder/modules.toml`).
pub const DEFAULT_LIST: &str = include_str!("../modules.toml");

/// A parsed module list: named groups of module names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleList {
    /// Format and content version of the list; bumped on every change so the
    /// manifest tells which list an image was built with.
    pub version: u32,
    pub groups: BTreeMap<String, Vec<String>>,
    /// Modules wanted if the kernel has them; absence is printed, not fatal.
    #[serde(default)]
    pub optional: Vec<String>,
    /// Groups loaded on every machine, whatever its devices: what is needed
    /// without a device (filesystems, device mapper, ciphers, code pages).
    #[serde(default)]
    pub always: Vec<String>,
}

impl ModuleList {
    pub fn parse(text: &str, origin: &str) -> Result<ModuleList> {
        let list: ModuleList =
            toml::from_str(text).with_context(|| format!("{origin}: invalid module list"))?;
        if list.groups.values().all(|g| g.is_empty()) {
            bail!("{origin}: the module list names no modules");
        }
        if let Some(g) = list.always.iter().find(|g| !list.groups.contains_key(*g)) {
            bail!("{origin}: `always` names {g:?}, which is not a group");
        }
        Ok(list)
    }
}

/// Module names compare with '-' and '_' equal (the kernel does the same).
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The fields of `.modinfo` we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub name: String,
    pub depends: Vec<String>,
    pub softdep_pre: Vec<String>,
    pub vermagic: String,
    /// `alias=` values in order: device aliases (`pci:v…`, `usb:v…`) and
    /// others (`fs-ntfs3`, `crypto-xts`).
    pub aliases: Vec<String>,
}

/// An alias that a device's `modalias` can match (`bus:…`), as opposed to
/// a name modprobe resolves (`fs-ntfs3`, `char-major-10-236`) or a device
/// node name (`devname:mapper/control`).
pub fn is_device_alias(alias: &str) -> bool {
    alias.contains(':') && !alias.starts_with("devname:") && !alias.contains(char::is_whitespace)
}

/// Reads `.modinfo` out of a `.ko.xz` (xz-compressed ELF relocatable).
pub fn modinfo(ko_xz: &[u8]) -> Result<ModInfo> {
    modinfo_elf(&decompress(ko_xz)?)
}

/// The module inside a `.ko.xz`.
pub fn decompress(ko_xz: &[u8]) -> Result<Vec<u8>> {
    let mut elf = Vec::with_capacity(ko_xz.len() * 4);
    liblzma::read::XzDecoder::new(ko_xz)
        .read_to_end(&mut elf)
        .context("decompressing the module")?;
    Ok(elf)
}

/// What the kernel's `sign-file` appends after the signature
/// (include/linux/module_signature.h, MODULE_SIG_STRING).
pub const MODULE_SIG_MARKER: &[u8] = b"~Module signature appended~\n";

/// How the initramfs stores each module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Debian's `.ko.xz` as shipped; the kernel decompresses it
    /// (`MODULE_INIT_COMPRESSED_FILE`).
    Xz,
    /// Decompressed `.ko`; the initramfs's own compression covers it.
    Plain,
    /// `.ko.zst`, one zstd frame per module that the rescue decompresses
    /// in user space before `init_module(2)`: the kernel unpacks only
    /// compressed bytes at boot, and only the modules a machine loads are
    /// ever decompressed.
    Zstd,
}

impl Storage {
    /// The word the build id and the build log use.
    pub fn as_str(self) -> &'static str {
        match self {
            Storage::Xz => "xz",
            Storage::Plain => "plain",
            Storage::Zstd => "zstd",
        }
    }
}

/// zstd level of each stored `.ko.zst`: 19, the highest before the
/// "ultra" levels, whose larger windows gain nothing on files of a few
/// hundred KiB (measured on trixie's 6.12: 22 is 125 bytes larger over 85
/// modules than 19, 15 is 9 % larger).
pub const MODULE_ZSTD_LEVEL: i32 = 19;

/// A module as the initramfs stores it (see [`Storage`]). Debian signs a
/// module before compressing it, so the decompressed module still ends in
/// its signature and loads under Secure Boot lockdown; one without a
/// signature is an error rather than a module the rescue could not load.
pub fn stored(path: &str, ko_xz: &[u8], how: Storage) -> Result<(String, Vec<u8>)> {
    if how == Storage::Xz {
        return Ok((path.to_string(), ko_xz.to_vec()));
    }
    let elf = decompress(ko_xz).with_context(|| format!("decompressing {path}"))?;
    if !elf.ends_with(MODULE_SIG_MARKER) {
        bail!("{path} carries no module signature: under Secure Boot lockdown it would not load");
    }
    let bytes = match how {
        Storage::Zstd => {
            crate::cpio::compress_zstd_kept(&elf, MODULE_ZSTD_LEVEL, "zstd-modules", 1024)
                .with_context(|| format!("compressing {path}"))?
        }
        _ => elf,
    };
    Ok((stored_path(path, how), bytes))
}

/// The path a module is stored under: `.ko.xz` becomes `.ko` (plain) or
/// `.ko.zst`.
pub fn stored_path(path: &str, how: Storage) -> String {
    match (path.strip_suffix(".xz"), how) {
        (Some(p), Storage::Plain) => p.to_string(),
        (Some(p), Storage::Zstd) => format!("{p}.zst"),
        _ => path.to_string(),
    }
}

impl Closure {
    /// The closure with every path (and dependency path) as stored.
    pub fn stored_paths(mut self, how: Storage) -> Closure {
        for m in &mut self.modules {
            m.path = stored_path(&m.path, how);
            for d in &mut m.deps {
                *d = stored_path(d, how);
            }
        }
        self
    }
}

/// Reads `.modinfo` from an uncompressed module: NUL-separated `key=value`
/// strings (include/linux/moduleparam.h, MODULE_INFO).
pub fn modinfo_elf(elf: &[u8]) -> Result<ModInfo> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).context("parsing the module's ELF")?;
    let section = file
        .section_by_name(".modinfo")
        .context("module has no .modinfo section")?;
    let data = section.data().context("reading .modinfo")?;
    let mut info = ModInfo::default();
    for entry in data.split(|b| *b == 0) {
        let Ok(s) = std::str::from_utf8(entry) else {
            continue;
        };
        let Some((k, v)) = s.split_once('=') else {
            continue;
        };
        match k {
            "name" => info.name = v.to_string(),
            "depends" => info.depends = split_names(v, ','),
            "vermagic" => info.vermagic = v.to_string(),
            "alias" => info.aliases.push(v.to_string()),
            // softdep=pre: a b post: c
            "softdep" => {
                let mut pre = false;
                for word in v.split_whitespace() {
                    match word {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        w if pre => info.softdep_pre.push(canonical(w)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if info.name.is_empty() {
        bail!(".modinfo has no name= entry");
    }
    Ok(info)
}

fn split_names(v: &str, sep: char) -> Vec<String> {
    v.split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(canonical)
        .collect()
}

/// One module chosen for the image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Chosen {
    pub name: String,
    /// Paths of the chosen modules it depends on (hard and soft).
    pub deps: Vec<String>,
    /// Path relative to `/lib/modules/<release>/`.
    pub path: String,
    /// Why it is there: the list group, or `dependency of X`.
    pub reason: String,
    /// Device aliases the rescue matches against `modalias`.
    pub aliases: Vec<String>,
    /// Loaded on every machine: in an `always` group, or with no device
    /// alias and needed by no other module (nothing would load it).
    pub always: bool,
}

/// The outcome of resolving a list against one kernel.
#[derive(Debug, Clone, Serialize)]
pub struct Closure {
    /// In load order: every module after all it depends on.
    pub modules: Vec<Chosen>,
    /// Listed names the kernel has built in (nothing to load).
    pub builtin: Vec<String>,
    /// Optional names this kernel lacks.
    pub absent_optional: Vec<String>,
}

/// Kernel modules available in a kernel package.
pub struct KernelModules {
    /// canonical name -> (relative path, compressed bytes)
    pub files: BTreeMap<String, (String, Vec<u8>)>,
    /// canonical names of built-in modules (from `modules.builtin`).
    pub builtin: BTreeSet<String>,
}

impl KernelModules {
    /// `files` maps paths relative to `/lib/modules/<release>/` to bytes.
    pub fn new(files: BTreeMap<String, Vec<u8>>, modules_builtin: &str) -> KernelModules {
        let mut by_name = BTreeMap::new();
        for (path, data) in files {
            let base = path.rsplit('/').next().unwrap_or(&path);
            if let Some(stem) = base.strip_suffix(".ko.xz") {
                by_name.insert(canonical(stem), (path, data));
            }
        }
        let builtin = modules_builtin
            .lines()
            .filter_map(|l| l.trim().rsplit('/').next())
            .filter_map(|b| b.strip_suffix(".ko"))
            .map(canonical)
            .collect();
        KernelModules {
            files: by_name,
            builtin,
        }
    }

    /// Resolves `list` to a load-ordered closure. A required module that is
    /// neither a file nor built in is an error naming it.
    pub fn resolve(&self, list: &ModuleList) -> Result<Closure> {
        let mut missing = Vec::new();
        let mut roots = Vec::new();
        for (group, names) in &list.groups {
            for n in names {
                roots.push((canonical(n), group.clone(), true));
            }
        }
        for n in &list.optional {
            roots.push((canonical(n), "optional".to_string(), false));
        }
        let mut state = Walk {
            km: self,
            done: BTreeSet::new(),
            onstack: BTreeSet::new(),
            out: Vec::new(),
            info: BTreeMap::new(),
        };
        let mut builtin = Vec::new();
        let mut absent_optional = Vec::new();
        let always_roots: BTreeSet<String> = roots
            .iter()
            .filter(|(_, g, _)| list.always.contains(g))
            .map(|(n, _, _)| n.clone())
            .collect();
        for (name, group, required) in roots {
            if self.files.contains_key(&name) {
                state.visit(&name, &group)?;
            } else if self.builtin.contains(&name) {
                builtin.push(name);
            } else if required {
                missing.push(format!("{name} (group {group})"));
            } else {
                absent_optional.push(name);
            }
        }
        if !missing.is_empty() {
            bail!(
                "the kernel has neither a module file nor a built-in for: {}; \
                 fix the module list or use a kernel that has them",
                missing.join(", ")
            );
        }
        builtin.sort();
        builtin.dedup();
        let needed: BTreeSet<String> = state
            .out
            .iter()
            .flat_map(|m| m.deps.iter().cloned())
            .collect();
        for m in &mut state.out {
            m.always = always_roots.contains(&m.name)
                || (m.aliases.is_empty() && !needed.contains(&m.path));
        }
        Ok(Closure {
            modules: state.out,
            builtin,
            absent_optional,
        })
    }
}

struct Walk<'a> {
    km: &'a KernelModules,
    done: BTreeSet<String>,
    onstack: BTreeSet<String>,
    out: Vec<Chosen>,
    info: BTreeMap<String, ModInfo>,
}

impl Walk<'_> {
    /// Depth-first post-order: dependencies are appended before dependants.
    fn visit(&mut self, name: &str, reason: &str) -> Result<()> {
        if self.done.contains(name) {
            return Ok(());
        }
        if !self.onstack.insert(name.to_string()) {
            bail!("module dependency cycle through {name}");
        }
        let (path, data) = &self.km.files[name];
        let info = match self.info.get(name) {
            Some(i) => i.clone(),
            None => {
                let i = modinfo(data).with_context(|| format!("reading modinfo of {path}"))?;
                self.info.insert(name.to_string(), i.clone());
                i
            }
        };
        for dep in &info.depends {
            if self.km.files.contains_key(dep) {
                self.visit(dep, &format!("dependency of {name}"))?;
            } else if !self.km.builtin.contains(dep) {
                bail!("{name} depends on {dep}, which this kernel does not have");
            }
        }
        // Soft pre-dependencies are best effort, as with modprobe.
        for dep in &info.softdep_pre {
            if self.km.files.contains_key(dep) {
                self.visit(dep, &format!("soft dependency of {name}"))?;
            }
        }
        self.onstack.remove(name);
        self.done.insert(name.to_string());
        let deps = info
            .depends
            .iter()
            .chain(&info.softdep_pre)
            .filter_map(|d| self.km.files.get(d).map(|(p, _)| p.clone()))
            .collect();
        self.out.push(Chosen {
            name: name.to_string(),
            deps,
            path: path.clone(),
            reason: reason.to_string(),
            aliases: info
                .aliases
                .iter()
                .filter(|a| is_device_alias(a))
                .cloned()
                .collect(),
            always: false,
        });
        Ok(())
    }
}

/// The `defib.load` file the rescue reads: one path per line, load order.
pub fn load_file(closure: &Closure, release: &str, list_version: u32) -> String {
    let mut s = format!(
        "# defib module load order for {release}, module list v{list_version}\n\
         # per line: a module path relative to /lib/modules/{release}/, then the\n\
         # paths of the modules it needs; every module comes after those it needs\n"
    );
    for m in &closure.modules {
        s.push_str(&m.path);
        for d in &m.deps {
            s.push(' ');
            s.push_str(d);
        }
        s.push('\n');
    }
    s
}

/// The `defib.alias` file the rescue reads: `always <path>` for the
/// modules every machine gets, then `alias <glob> <path>` per device
/// alias; both in load order.
pub fn alias_file(closure: &Closure, release: &str, list_version: u32) -> String {
    let mut s = format!(
        "# defib module aliases for {release}, module list v{list_version}\n\
         # `always <path>`: loaded on every machine; `alias <glob> <path>`: loaded\n\
         # when a device's modalias matches the glob (from the module's .modinfo)\n"
    );
    for m in closure.modules.iter().filter(|m| m.always) {
        s.push_str(&format!("always {}\n", m.path));
    }
    for m in &closure.modules {
        for a in &m.aliases {
            s.push_str(&format!("alias {a} {}\n", m.path));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 relocatable with one `.modinfo` section, enough for
    /// `object` to parse (ELF-64 Object File Format, v1.5).
    fn fake_module(modinfo: &str) -> Vec<u8> {
        use object::write::Object;
        let mut obj = Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let id = obj.add_section(
            Vec::new(),
            b".modinfo".to_vec(),
            object::SectionKind::ReadOnlyData,
        );
        obj.append_section_data(id, modinfo.replace('\n', "\0").as_bytes(), 1);
        let elf = obj.write().unwrap();
        let mut xz = Vec::new();
        let mut enc = liblzma::write::XzEncoder::new(&mut xz, 1);
        std::io::Write::write_all(&mut enc, &elf).unwrap();
        enc.finish().unwrap();
        xz
    }

    fn kernel() -> KernelModules {
        let mut files = BTreeMap::new();
        let mods = [
            (
                "kernel/drivers/md/dm-mod.ko.xz",
                "name=dm_mod\ndepends=\nalias=devname:mapper/control\nalias=char-major-10-236\n",
            ),
            (
                "kernel/drivers/ata/libata.ko.xz",
                "name=libata\ndepends=\n",
            ),
            (
                "kernel/drivers/ata/ahci.ko.xz",
                "name=ahci\ndepends=libata\nalias=pci:v*d*sv*sd*bc01sc06i01*\nalias=pci:v00008086d00002922sv*sd*bc*sc*i*\n",
            ),
            (
                "kernel/drivers/md/dm-crypt.ko.xz",
                "name=dm_crypt\ndepends=dm-mod\nvermagic=6.12\n",
            ),
            (
                "kernel/fs/ntfs3/ntfs3.ko.xz",
                "name=ntfs3\ndepends=\nsoftdep=pre: crc32c post: foo\n",
            ),
            (
                "kernel/crypto/crc32c_generic.ko.xz",
                "name=crc32c_generic\n",
            ),
            (
                "kernel/crypto/crc32c.ko.xz",
                "name=crc32c\ndepends=crc32c_generic\n",
            ),
            ("kernel/a.ko.xz", "name=a\ndepends=b\n"),
            ("kernel/b.ko.xz", "name=b\ndepends=a\n"),
            ("kernel/c.ko.xz", "name=c\ndepends=nothere\n"),
        ];
        for (p, info) in mods {
            files.insert(p.to_string(), fake_module(info));
        }
        KernelModules::new(
            files,
            "kernel/drivers/scsi/sd_mod.ko\nkernel/fs/vfat/vfat.ko\n",
        )
    }

    fn list(toml: &str) -> ModuleList {
        ModuleList::parse(toml, "test").unwrap()
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let c = kernel()
            .resolve(&list(
                "version = 1\n[groups]\nfs = [\"ntfs3\", \"vfat\"]\ndm = [\"dm-crypt\", \"dm_mod\"]\n",
            ))
            .unwrap();
        let names: Vec<_> = c.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["dm_mod", "dm_crypt", "crc32c_generic", "crc32c", "ntfs3"]
        );
        assert_eq!(c.builtin, ["vfat"]);
        assert_eq!(c.modules[0].reason, "dependency of dm_crypt");
        assert_eq!(c.modules[3].reason, "soft dependency of ntfs3");
    }

    #[test]
    fn missing_required_module_is_named() {
        let err = kernel()
            .resolve(&list("version = 1\n[groups]\nstorage = [\"nvme\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nvme (group storage)"), "{err}");
    }

    #[test]
    fn optional_absent_is_reported_not_fatal() {
        let c = kernel()
            .resolve(&list(
                "version = 1\noptional = [\"smartpqi\"]\n[groups]\nfs = [\"ntfs3\"]\n",
            ))
            .unwrap();
        assert_eq!(c.absent_optional, ["smartpqi"]);
    }

    #[test]
    fn cycles_and_dangling_dependencies_are_errors() {
        let k = kernel();
        let e = k
            .resolve(&list("version = 1\n[groups]\nx = [\"a\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cycle"), "{e}");
        let e = k
            .resolve(&list("version = 1\n[groups]\nx = [\"c\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("depends on nothere"), "{e}");
    }

    #[test]
    fn malformed_list_is_rejected_with_origin() {
        let e = format!(
            "{:#}",
            ModuleList::parse("version = 1\n[groups]\nx = 3\n", "mods.toml").unwrap_err()
        );
        assert!(e.contains("mods.toml"), "{e}");
        assert!(ModuleList::parse("version = 1\n[groups]\n", "m").is_err());
    }

    #[test]
    fn default_list_parses() {
        let l = ModuleList::parse(DEFAULT_LIST, "builtin").unwrap();
        assert!(l.groups["filesystems"].iter().any(|m| m == "ntfs3"));
    }

    #[test]
    fn aliases_say_what_loads_by_hardware_and_what_always() {
        let c = kernel()
            .resolve(&list(
                "version = 1\nalways = [\"fs\"]\n[groups]\nfs = [\"ntfs3\"]\nstorage = [\"ahci\", \"libata\", \"dm-mod\"]\n",
            ))
            .unwrap();
        let by = |n: &str| c.modules.iter().find(|m| m.name == n).unwrap();
        assert!(by("ntfs3").always, "in an always group");
        assert!(!by("crc32c").always, "a dependency, loaded with ntfs3");
        assert!(!by("ahci").always, "loaded by its PCI class");
        assert!(!by("libata").always, "ahci needs it");
        assert!(by("dm_mod").always, "no device alias and nobody needs it");
        assert_eq!(by("dm_mod").aliases, Vec::<String>::new());
        let f = alias_file(&c, "6.12", 3);
        let lines: Vec<_> = f.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "always kernel/fs/ntfs3/ntfs3.ko.xz",
                "always kernel/drivers/md/dm-mod.ko.xz",
                "alias pci:v*d*sv*sd*bc01sc06i01* kernel/drivers/ata/ahci.ko.xz",
                "alias pci:v00008086d00002922sv*sd*bc*sc*i* kernel/drivers/ata/ahci.ko.xz",
            ]
        );
    }

    #[test]
    fn stored_modules_keep_their_signature_or_are_refused() {
        let xz = |b: &[u8]| {
            let mut out = Vec::new();
            let mut enc = liblzma::write::XzEncoder::new(&mut out, 1);
            std::io::Write::write_all(&mut enc, b).unwrap();
            enc.finish().unwrap();
            out
        };
        let signed = [b"\x7fELF...".as_slice(), b"sig", MODULE_SIG_MARKER].concat();
        let (p, b) = stored("kernel/a.ko.xz", &xz(&signed), Storage::Plain).unwrap();
        assert_eq!((p.as_str(), b), ("kernel/a.ko", signed.clone()));
        let (p, b) = stored("kernel/a.ko.xz", &xz(&signed), Storage::Xz).unwrap();
        assert_eq!((p.as_str(), b), ("kernel/a.ko.xz", xz(&signed)));
        let (p, b) = stored("kernel/a.ko.xz", &xz(&signed), Storage::Zstd).unwrap();
        assert_eq!(p, "kernel/a.ko.zst");
        // One frame that records its size: what the rescue's loader reads.
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&b).ok(),
            Some(Some(signed.len() as u64))
        );
        assert_eq!(zstd::bulk::decompress(&b, signed.len()).unwrap(), signed);
        for how in [Storage::Plain, Storage::Zstd] {
            let e = stored("kernel/u.ko.xz", &xz(b"\x7fELF unsigned"), how).unwrap_err();
            assert!(e.to_string().contains("no module signature"), "{e}");
        }
        let c = kernel()
            .resolve(&list("version = 1\n[groups]\ndm = [\"dm-crypt\"]\n"))
            .unwrap()
            .stored_paths(Storage::Zstd);
        assert_eq!(c.modules[1].path, "kernel/drivers/md/dm-crypt.ko.zst");
        assert_eq!(c.modules[1].deps, ["kernel/drivers/md/dm-mod.ko.zst"]);
    }

    #[test]
    fn always_must_name_groups() {
        let e = ModuleList::parse(
            "version = 1\nalways = [\"fs\"]\n[groups]\nx = [\"a\"]\n",
            "m",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"fs\""), "{e}");
    }

    #[test]
    fn load_file_lists_paths_in_order() {
        let c = kernel()
            .resolve(&list("version = 1\n[groups]\ndm = [\"dm-crypt\"]\n"))
            .unwrap();
        let f = load_file(&c, "6.12", 1);
        let paths: Vec<_> = f.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            paths,
            [
                "kernel/drivers/md/dm-mod.ko.xz",
                "kernel/drivers/md/dm-crypt.ko.xz kernel/drivers/md/dm-mod.ko.xz"
            ]
        );
    }
}
