//! `defib build`: Debian parts + rescue binary + payloads -> USB image.
//!
//! The pipeline is pure over its inputs: the same `.deb` files, rescue
//! binary, payloads, module list, options and `SOURCE_DATE_EPOCH` give the
//! same bytes. GUIDs and the FAT volume id come from a seed derived from
//! the build id, never from a clock or a random source.

use crate::bootmenu::{self, After};
use crate::cpio::{compress_zstd_cached, Archive};
use crate::deb::{Deb, Member};
use crate::image::{write_usb_image, EspSpec};
use crate::kmod::{self, KernelModules, ModuleList};
use crate::manifest::{self, FileEntry, Manifest, Part, Taken};
use crate::sha256_hex;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use defib_rescue::layout;
/// The FAT label and GPT partition name the rescue looks for.
pub use defib_rescue::layout::LABEL;
/// zstd level for initramfs segments. 19 because the modules inside are
/// stored decompressed (below): at 19 the initramfs is smaller than with
/// Debian's `.ko.xz` inside at 12 (7351 against 7531 KiB for trixie's
/// 6.12 and the default list); at 12 and 16 it was larger (8156, 7842 KiB).
const ZSTD_LEVEL: i32 = 19;

/// How the initramfs stores the modules (see `kmod::Storage`). History,
/// measured under TCG with scripts/bench: Debian's `.ko.xz`, decompressed
/// by the kernel at load, took 5.2-7.6 s to load the 31 modules of the
/// McAfee AHCI machine against 4.0-5.0 s for plain `.ko`; but plain
/// modules make the kernel unpack about 28 MiB it mostly never loads
/// (0.5 s of every boot before the rescue starts, and 23 MiB of RAM).
/// `.ko.zst` keeps the unpacking to compressed bytes and decompresses in
/// user space only what a machine loads (figures in docs/boot-speed.md).
const MODULE_STORAGE: kmod::Storage = kmod::Storage::Zstd;

/// Everything a build needs.
pub struct BuildConfig {
    pub debs: PathBuf,
    pub rescue: PathBuf,
    pub payloads: PathBuf,
    pub out: PathBuf,
    pub free_space: u64,
    pub source_date_epoch: u64,
    pub modules: ModuleList,
    /// The module list's text, hashed into the build id.
    pub modules_text: String,
    pub after: After,
    /// BitLocker key files copied into `\keys\` on the stick.
    pub keys: Vec<PathBuf>,
}

/// What a build made, for the CLI's summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildSummary {
    pub image: PathBuf,
    pub image_size: u64,
    pub initramfs_size: u64,
    pub payloads_size: u64,
    pub build_id: String,
    pub kernel_release: String,
    pub modules: usize,
    pub manifest: Manifest,
}

/// The parts of a build before they are laid out on a medium; shared by the
/// USB image and (later) the PXE tree and ISO.
pub struct Staged {
    pub kernel: Vec<u8>,
    pub initramfs: Vec<u8>,
    pub payloads: Vec<u8>,
    pub shim: Vec<u8>,
    pub grub: Vec<u8>,
    pub manifest: Manifest,
    /// The known-good store as it goes onto the medium (not into RAM):
    /// its index and its objects, read from the payloads folder.
    pub store: StoreFiles,
}

/// The store's files for a medium: `index.json` and the objects the index
/// names, as (SHA-256, path in the payloads folder). The objects are read
/// when the medium is written, one at a time, never kept together.
#[derive(Debug, Clone, Default)]
pub struct StoreFiles {
    pub index: Option<Vec<u8>>,
    pub objects: Vec<(String, PathBuf)>,
    /// Their total size in bytes.
    pub bytes: u64,
}

impl StoreFiles {
    /// Reads the store in `dir` (already verified by [`check_payloads`]).
    pub fn read(dir: &Path) -> Result<StoreFiles> {
        let store = defib_rescue::store::Store::open(dir)?;
        let index = match std::fs::read(dir.join(defib_rescue::store::INDEX_FILE)) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut objects: BTreeMap<String, (PathBuf, u64)> = BTreeMap::new();
        for e in &store.index.entries {
            objects.insert(e.sha256.clone(), (store.object_path(&e.sha256), e.size));
        }
        let bytes = objects.values().map(|(_, s)| s).sum();
        Ok(StoreFiles {
            index,
            objects: objects.into_iter().map(|(h, (p, _))| (h, p)).collect(),
            bytes,
        })
    }

    /// `(path on the medium under `base`, path on disk)` for every file.
    pub fn medium_files(&self, base: &str) -> Vec<(String, PathBuf)> {
        self.objects
            .iter()
            .map(|(h, p)| {
                (
                    format!("{base}/{}/{h}", defib_rescue::store::OBJECTS_DIR),
                    p.clone(),
                )
            })
            .collect()
    }
}

/// The smallest machine the rescue must run on.
pub const RAM_FLOOR: u64 = 256 << 20;
/// What the running system needs beyond the boot files: the kernel's own
/// allocations, the rescue's heap, one store object being restored, the
/// page cache of the victim's mount.
pub const RAM_WORKING_MARGIN: u64 = 96 << 20;

/// Sizes of what must sit in RAM while the kernel boots.
#[derive(Debug, Clone, Copy)]
pub struct RamUse {
    pub kernel: u64,
    pub initramfs: u64,
    pub initramfs_unpacked: u64,
    pub payloads: u64,
    pub payloads_unpacked: u64,
}

impl RamUse {
    /// The boot loader holds the kernel and both compressed segments while
    /// the kernel unpacks them into its rootfs (the compressed copies are
    /// freed only afterwards), and the kernel decompresses to about three
    /// times its bzImage. Refuses a build that would not boot in
    /// [`RAM_FLOOR`] with [`RAM_WORKING_MARGIN`] to spare.
    pub fn check(&self) -> Result<u64> {
        let need = 3 * self.kernel
            + self.initramfs
            + self.initramfs_unpacked
            + self.payloads
            + self.payloads_unpacked
            + RAM_WORKING_MARGIN;
        if need > RAM_FLOOR {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            bail!(
                "the image would need {:.0} MiB of RAM to boot, over the {:.0} MiB a rescue must fit: \
                 kernel {:.1} MiB (x3 unpacked), initramfs {:.1} MiB ({:.1} MiB unpacked), \
                 payloads {:.1} MiB ({:.1} MiB unpacked), {:.0} MiB working margin; \
                 keep large files out of the payloads folder: known-good files belong in the \
                 store (payloads/store, `defib store import`), which stays on the medium",
                mib(need),
                mib(RAM_FLOOR),
                mib(self.kernel),
                mib(self.initramfs),
                mib(self.initramfs_unpacked),
                mib(self.payloads),
                mib(self.payloads_unpacked),
                mib(RAM_WORKING_MARGIN),
            );
        }
        Ok(need)
    }
}

/// Finds the one versioned kernel image package in the set.
fn kernel_deb(debs: &BTreeMap<String, Deb>) -> Result<&Deb> {
    let kernels: Vec<&Deb> = debs
        .values()
        .filter(|d| d.package().starts_with("linux-image-") && d.package() != "linux-image-amd64")
        .collect();
    match kernels.as_slice() {
        [one] => Ok(one),
        [] => {
            bail!("no linux-image-<version>-amd64 package among the .deb files; run `defib fetch`")
        }
        many => bail!(
            "several kernel packages: {}; keep one",
            many.iter()
                .map(|d| d.package())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn need<'a>(debs: &'a BTreeMap<String, Deb>, name: &str, dir: &Path) -> Result<&'a Deb> {
    debs.get(name).with_context(|| {
        format!(
            "{name} is not among the .deb files in {}; run `defib fetch` or add it",
            dir.display()
        )
    })
}

/// Checks the rescue binary is a static x86-64 ELF executable: the
/// initramfs has no dynamic loader or libc.
pub fn check_static(bin: &[u8], path: &Path) -> Result<()> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    use object::Endianness;
    let elf = ElfFile64::<Endianness>::parse(bin)
        .with_context(|| format!("{}: not a 64-bit ELF executable", path.display()))?;
    if elf.elf_header().e_machine.get(elf.endian()) != object::elf::EM_X86_64 {
        bail!("{}: not an x86-64 binary", path.display());
    }
    for ph in elf.elf_program_headers() {
        if ph.p_type(elf.endian()) == object::elf::PT_INTERP {
            bail!(
                "{}: dynamically linked (has an ELF interpreter); build it static with scripts/build",
                path.display()
            );
        }
    }
    Ok(())
}

/// Reads the inputs and makes the kernel, initramfs, payload segment and
/// manifest, without writing anything.
pub fn stage(cfg: &BuildConfig, log: &mut dyn FnMut(&str)) -> Result<Staged> {
    let debs = crate::deb::scan_dir(&cfg.debs)?;
    let kdeb = kernel_deb(&debs)?;
    let shim_deb = need(&debs, "shim-signed", &cfg.debs)?;
    let grub_deb = need(&debs, "grub-efi-amd64-signed", &cfg.debs)?;
    let bb_deb = need(&debs, "busybox-static", &cfg.debs)?;

    log(&format!("reading {} {}", kdeb.package(), kdeb.version()));
    let members = kdeb.extract(|p| {
        (p.starts_with("boot/vmlinuz-"))
            || (p.starts_with("usr/lib/modules/")
                && (p.ends_with(".ko.xz") || p.ends_with("/modules.builtin")))
    })?;
    let (vmlinuz_path, kernel) = members
        .iter()
        .find_map(|(p, m)| match m {
            Member::File { data, .. } if p.starts_with("boot/vmlinuz-") => {
                Some((p.clone(), data.clone()))
            }
            _ => None,
        })
        .with_context(|| format!("{}: no boot/vmlinuz-*", kdeb.path.display()))?;
    let release = vmlinuz_path.trim_start_matches("boot/vmlinuz-").to_string();
    let mod_prefix = format!("usr/lib/modules/{release}/");
    let mut ko = BTreeMap::new();
    let mut builtin_txt = String::new();
    for (p, m) in members {
        let Some(rel) = p.strip_prefix(&mod_prefix) else {
            continue;
        };
        let Member::File { data, .. } = m else {
            continue;
        };
        if rel == "modules.builtin" {
            builtin_txt = String::from_utf8_lossy(&data).to_string();
        } else {
            ko.insert(rel.to_string(), data);
        }
    }
    if ko.is_empty() {
        bail!("{}: no modules under /{mod_prefix}", kdeb.path.display());
    }
    let km = KernelModules::new(ko, &builtin_txt);
    let closure = km.resolve(&cfg.modules)?;
    log(&format!(
        "kernel {release}: {} modules to load ({} listed built in{})",
        closure.modules.len(),
        closure.builtin.len(),
        if closure.absent_optional.is_empty() {
            String::new()
        } else {
            format!(", optional absent: {}", closure.absent_optional.join(" "))
        }
    ));

    let shim_path = "usr/lib/shim/shimx64.efi.signed";
    let grub_path = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";
    let shim = shim_deb.file(shim_path)?;
    let grub = grub_deb.file(grub_path)?;
    let busybox = bb_deb.file("usr/bin/busybox")?;

    let rescue = std::fs::read(&cfg.rescue).with_context(|| {
        format!(
            "reading the rescue binary {} (build it with scripts/build)",
            cfg.rescue.display()
        )
    })?;
    check_static(&rescue, &cfg.rescue)?;

    check_payloads(&cfg.payloads, log)?;
    let payloads = payload_archive(&cfg.payloads)?;
    let mut payload_cpio = Vec::new();
    payloads.write_newc(&mut payload_cpio, cfg.source_date_epoch as u32)?;

    // The build id covers every input and option that shapes the bytes.
    let mut id_input = String::new();
    for d in debs.values() {
        id_input.push_str(&format!(
            "deb {} {} {}\n",
            d.package(),
            d.version(),
            d.sha256
        ));
    }
    id_input.push_str(&format!(
        "modules stored {}, zstd {ZSTD_LEVEL}\n",
        MODULE_STORAGE.as_str()
    ));
    id_input.push_str(&format!(
        "rescue {}\npayloads {}\nmodules {}\nfree {}\nafter {}\nepoch {}\nversion {}\n",
        sha256_hex(&rescue),
        sha256_hex(&payload_cpio),
        sha256_hex(cfg.modules_text.as_bytes()),
        cfg.free_space,
        cfg.after.as_str(),
        cfg.source_date_epoch,
        env!("CARGO_PKG_VERSION"),
    ));
    let build_id = sha256_hex(id_input.as_bytes())[..16].to_string();

    let mut ar = Archive::new();
    ar.add_file("init", 0o755, rescue.clone())?;
    ar.add_file("bin/busybox", 0o755, busybox)?;
    // The technician's shell runs the host-mode CLI as `rescue` (scan,
    // fix, undo), as docs/technician.md tells them to: the same binary,
    // which acts as PID 1 only when it is PID 1.
    ar.add_symlink("bin/rescue", "/init")?;
    for dir in ["dev", "proc", "sys", "run", "tmp", "mnt", "etc/defib"] {
        ar.add_dir(dir, 0o755)?;
    }
    let modroot = format!("lib/modules/{release}");
    for (path, bytes) in stored_modules(&closure, &km.files)? {
        ar.add_file(&format!("{modroot}/{path}"), 0o644, bytes)?;
    }
    let closure = closure.stored_paths(MODULE_STORAGE);
    ar.add_file(
        &format!("{modroot}/{}", layout::MODULE_LIST),
        0o644,
        kmod::load_file(&closure, &release, cfg.modules.version).into_bytes(),
    )?;
    ar.add_file(
        &format!("{modroot}/{}", layout::MODULE_ALIASES),
        0o644,
        kmod::alias_file(&closure, &release, cfg.modules.version).into_bytes(),
    )?;
    let build_json = serde_json::json!({
        "build_id": build_id,
        "defib_version": env!("CARGO_PKG_VERSION"),
        "kernel": release,
        "source_date_epoch": cfg.source_date_epoch,
    });
    ar.add_file(
        layout::BUILD_INFO,
        0o644,
        serde_json::to_vec_pretty(&build_json)?,
    )?;
    let mut cpio = Vec::new();
    ar.write_newc(&mut cpio, cfg.source_date_epoch as u32)?;
    let initramfs = compress_zstd_cached(&cpio, ZSTD_LEVEL)?;
    let payloads_z = compress_zstd_cached(&payload_cpio, ZSTD_LEVEL)?;
    let store = StoreFiles::read(&cfg.payloads.join("store"))?;
    log(&format!(
        "initramfs {} KiB ({} entries), payloads {} KiB, store {} objects ({} KiB, on the medium)",
        initramfs.len() / 1024,
        ar.len(),
        payloads_z.len() / 1024,
        store.objects.len(),
        store.bytes / 1024
    ));
    let need = RamUse {
        kernel: kernel.len() as u64,
        initramfs: initramfs.len() as u64,
        initramfs_unpacked: cpio.len() as u64,
        payloads: payloads_z.len() as u64,
        payloads_unpacked: payload_cpio.len() as u64,
    }
    .check()?;
    log(&format!(
        "RAM to boot: about {} MiB of the {} MiB minimum",
        need >> 20,
        RAM_FLOOR >> 20
    ));

    let entries = bootmenu::entries(cfg.after);
    let parts = vec![
        Part {
            package: kdeb.package().into(),
            version: kdeb.version().into(),
            deb_sha256: kdeb.sha256.clone(),
            taken: vec![
                Taken {
                    from: vmlinuz_path.clone(),
                    to: bootmenu::KERNEL.into(),
                },
                Taken {
                    from: format!("{mod_prefix}*.ko.xz ({} modules)", closure.modules.len()),
                    to: bootmenu::INITRD.into(),
                },
            ],
        },
        part(shim_deb, shim_path, "EFI/BOOT/BOOTX64.EFI"),
        part(grub_deb, grub_path, "EFI/BOOT/grubx64.efi"),
        part(bb_deb, "usr/bin/busybox", "(initramfs) /bin/busybox"),
    ];
    let manifest = Manifest {
        schema: manifest::SCHEMA,
        defib_version: env!("CARGO_PKG_VERSION").into(),
        build_id,
        source_date_epoch: cfg.source_date_epoch,
        kernel_release: release,
        parts,
        files: Vec::new(),
        modules: manifest::Modules {
            list_version: cfg.modules.version,
            loaded: closure.modules.iter().map(|m| m.name.clone()).collect(),
            builtin: closure.builtin.clone(),
            absent_optional: closure.absent_optional.clone(),
        },
        rescue: FileEntry {
            path: "(initramfs) /init".into(),
            size: rescue.len() as u64,
            sha256: sha256_hex(&rescue),
        },
        boot_entries: entries,
        after: cfg.after.as_str().into(),
    };
    Ok(Staged {
        kernel,
        initramfs,
        payloads: payloads_z,
        shim,
        grub,
        manifest,
        store,
    })
}

/// Each module of `closure` as the initramfs stores it, in the closure's
/// order. Compressing is the slow part of a fresh build (zstd 19 over
/// about 28 MiB), so it runs on every CPU; the cache makes it a lookup on
/// the next build.
fn stored_modules(
    closure: &kmod::Closure,
    files: &BTreeMap<String, (String, Vec<u8>)>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let store = |m: &kmod::Chosen| match files.get(&m.name) {
        Some((_, xz)) => kmod::stored(&m.path, xz, MODULE_STORAGE),
        None => bail!("{} is not in the kernel package", m.path),
    };
    // Thread t stores modules t, t + threads, …; their results are put
    // back in order.
    let parts = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                sc.spawn(move || {
                    closure
                        .modules
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .map(store)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Vec<_>>()
    });
    let mut iters: Vec<_> = parts.into_iter().map(Vec::into_iter).collect();
    (0..closure.modules.len())
        .map(|i| iters[i % threads].next().expect("one result per module"))
        .collect()
}

fn part(d: &Deb, from: &str, to: &str) -> Part {
    Part {
        package: d.package().into(),
        version: d.version().into(),
        deb_sha256: d.sha256.clone(),
        taken: vec![Taken {
            from: from.into(),
            to: to.into(),
        }],
    }
}

/// Validates what the rescue will read from the payloads: every playbook
/// parses and validates, and the store's index and objects verify. A bad
/// payload stops the build here rather than a repair on a ward.
pub fn check_payloads(dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let pb = dir.join("playbooks");
    let playbooks = if pb.is_dir() {
        defib_rescue::playbook::load_dir(&pb)?
    } else {
        Vec::new()
    };
    let store = defib_rescue::store::Store::open(&dir.join("store"))?;
    let v = store.verify()?;
    if !v.is_clean() {
        bail!(
            "the store in {} does not verify: {v:?}; run `defib store verify`",
            dir.join("store").display()
        );
    }
    log(&format!(
        "payloads: {} playbooks ({}), store {} entries",
        playbooks.len(),
        playbooks
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        store.index.entries.len()
    ));
    Ok(())
}

/// The payload segment: `payloads/` as `/payloads/…` in its own cpio,
/// without the store's objects (they go onto the medium; the segment keeps
/// `store/index.json`, which the build id covers). Only regular files and
/// directories; a symlink is refused, since it could point anywhere on the
/// build host.
pub fn payload_archive(dir: &Path) -> Result<Archive> {
    let mut ar = Archive::new();
    ar.add_dir("payloads", 0o755)?;
    if !dir.is_dir() {
        bail!(
            "payloads folder {} not found; pass --payloads DIR",
            dir.display()
        );
    }
    fn walk(ar: &mut Archive, root: &Path, dir: &Path) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).context("payload path")?;
            let rel = rel
                .to_str()
                .with_context(|| format!("{}: not UTF-8", p.display()))?;
            if rel == "store/objects" {
                continue;
            }
            let dest = format!("payloads/{rel}");
            let ft = e
                .file_type()
                .with_context(|| format!("reading {}", p.display()))?;
            if ft.is_symlink() {
                bail!(
                    "{}: symlinks are not allowed in payloads; copy the file instead",
                    p.display()
                );
            } else if ft.is_dir() {
                ar.add_dir(&dest, 0o755)?;
                walk(ar, root, &p)?;
            } else if ft.is_file() {
                let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                ar.add_file(&dest, 0o644, data)?;
            }
        }
        Ok(())
    }
    walk(&mut ar, dir, dir)?;
    Ok(ar)
}

/// Reads and checks `--keys` files: each must hold at least one key the
/// rescue can use (a wrong file is found now, not at a PC in a crisis).
/// Returns (file name on the stick, bytes).
pub fn key_files(paths: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for p in paths {
        let mut store = defib_rescue::bitlocker::keyfile::KeyStore::default();
        let n = store
            .add_file(p)
            .with_context(|| format!("--keys {}", p.display()))?;
        // A sealed file (`defib keys seal`) cannot be opened without its
        // passphrase; its header was checked by add_file.
        let sealed = !store.sealed.is_empty();
        if n == 0 && !sealed {
            anyhow::bail!(
                "--keys {}: no BitLocker key in it (a CSV export, the .TXT Windows saves, a .BEK, or a file sealed by `defib keys seal`)",
                p.display()
            );
        }
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && n.len() <= 200 && !n.contains(['/', '\\']))
            .with_context(|| format!("--keys {}: unusable file name", p.display()))?
            .to_string();
        if sealed && !name.to_ascii_lowercase().ends_with(".age") {
            anyhow::bail!(
                "--keys {}: a sealed key file must be named *.age for the rescue to look at it (e.g. {name}.age)",
                p.display()
            );
        }
        if out.iter().any(|(o, _)| o.eq_ignore_ascii_case(&name)) {
            anyhow::bail!("--keys: two files named {name}");
        }
        let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        out.push((name, data));
    }
    Ok(out)
}

/// Builds the USB image.
pub fn build(cfg: &BuildConfig, log: &mut dyn FnMut(&str)) -> Result<BuildSummary> {
    let mut staged = stage(cfg, log)?;
    // Legacy BIOS: syslinux on the same FAT32, the same menu as GRUB's.
    let syslinux = crate::bios::Syslinux::load(&crate::deb::scan_dir(&cfg.debs)?, &cfg.debs)?;
    staged.manifest.parts.extend(syslinux.parts.iter().cloned());
    let mut files: BTreeMap<String, Vec<u8>> = syslinux.esp_files(&bootmenu::syslinux_cfg(
        &staged.manifest.boot_entries,
        &staged.manifest.build_id,
    ));
    files.insert("EFI/BOOT/BOOTX64.EFI".into(), staged.shim.clone());
    files.insert("EFI/BOOT/grubx64.efi".into(), staged.grub.clone());
    files.insert(
        "EFI/debian/grub.cfg".into(),
        bootmenu::grub_cfg(&staged.manifest.boot_entries, &staged.manifest.build_id).into_bytes(),
    );
    files.insert(bootmenu::KERNEL.into(), staged.kernel.clone());
    files.insert(bootmenu::INITRD.into(), staged.initramfs.clone());
    files.insert(bootmenu::PAYLOADS.into(), staged.payloads.clone());
    staged.manifest.files = crate::manifest::file_entries(&files);
    files.insert(
        layout::MANIFEST.into(),
        serde_json::to_vec_pretty(&staged.manifest)?,
    );
    // Key files go on the stick but not into the manifest: no list of
    // recovery-key file names and hashes on a medium that can be lost.
    for (name, data) in key_files(&cfg.keys)? {
        files.insert(format!("{}/{name}", layout::KEYS_DIR), data);
    }
    // The store: the index (also in the payloads, covered by the build id)
    // and the objects it names, which the index's hashes cover.
    if let Some(ix) = &staged.store.index {
        files.insert(
            format!(
                "{}/{}",
                layout::MEDIUM_STORE_DIR,
                defib_rescue::store::INDEX_FILE
            ),
            ix.clone(),
        );
    }
    let from_disk = staged
        .store
        .medium_files(layout::MEDIUM_STORE_DIR)
        .into_iter()
        .collect();
    let seed_hex = sha256_hex(format!("defib image seed {}", staged.manifest.build_id).as_bytes());
    let mut seed = [0u8; 32];
    hex::decode_to_slice(&seed_hex, &mut seed).context("seed")?;
    let spec = EspSpec {
        files,
        from_disk,
        dirs: vec![layout::REPORTS_DIR.into(), layout::KEYS_DIR.into()],
        label: LABEL.into(),
        free_space: cfg.free_space,
        seed,
        mtime: cfg.source_date_epoch,
        legacy_bios_bootable: true,
    };
    log(&format!("writing {}", cfg.out.display()));
    // Written under a temp name, made BIOS-bootable, then renamed: a failed
    // syslinux install leaves no half-bootable image at `out`.
    let tmp = bios_tmp_path(&cfg.out)?;
    let summary = write_usb_image(&spec, &tmp)?;
    log("installing syslinux (legacy BIOS boot)");
    if let Err(e) = syslinux.install(&tmp, summary.esp_offset, cfg.source_date_epoch) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!(
            "making {} bootable on legacy BIOS",
            cfg.out.display()
        )));
    }
    std::fs::rename(&tmp, &cfg.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), cfg.out.display()))?;
    Ok(BuildSummary {
        image: cfg.out.clone(),
        image_size: summary.size,
        initramfs_size: staged.initramfs.len() as u64,
        payloads_size: staged.payloads.len() as u64,
        build_id: staged.manifest.build_id.clone(),
        kernel_release: staged.manifest.kernel_release.clone(),
        modules: staged.manifest.modules.loaded.len(),
        manifest: staged.manifest,
    })
}

/// `.<name>.bios-<pid>` beside `out`.
fn bios_tmp_path(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a file path", out.display()))?
        .to_string_lossy();
    Ok(out.with_file_name(format!(".{name}.bios-{}", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("playbooks")).unwrap();
        std::fs::write(d.path().join("playbooks/a.toml"), "x").unwrap();
        let ar = payload_archive(d.path()).unwrap();
        assert_eq!(ar.len(), 3);
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("evil")).unwrap();
        let e = payload_archive(d.path()).unwrap_err().to_string();
        assert!(e.contains("symlinks are not allowed"), "{e}");
    }

    #[test]
    fn store_objects_stay_out_of_the_payload_segment() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("playbooks")).unwrap();
        std::fs::create_dir_all(d.path().join("store/objects")).unwrap();
        std::fs::write(d.path().join("playbooks/a.toml"), "x").unwrap();
        std::fs::write(d.path().join("store/index.json"), "{}").unwrap();
        std::fs::write(d.path().join("store/objects/ab"), vec![0u8; 4096]).unwrap();
        let mut cpio = Vec::new();
        payload_archive(d.path())
            .unwrap()
            .write_newc(&mut cpio, 0)
            .unwrap();
        let text = String::from_utf8_lossy(&cpio);
        assert!(text.contains("payloads/store/index.json"));
        assert!(text.contains("payloads/playbooks/a.toml"));
        assert!(!text.contains("objects"), "objects go to the medium");
    }

    #[test]
    fn a_build_that_would_not_boot_in_256_mib_is_refused_with_sizes() {
        let mib = 1u64 << 20;
        let today = RamUse {
            kernel: 10 * mib,
            initramfs: 9 * mib,
            initramfs_unpacked: 11 * mib,
            payloads: mib / 10,
            payloads_unpacked: mib / 5,
        };
        let need = today.check().unwrap();
        assert!(need < RAM_FLOOR);
        // The 300 MB store of issue 16, had it stayed in the payloads.
        let e = RamUse {
            payloads: 290 * mib,
            payloads_unpacked: 300 * mib,
            ..today
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("over the 256 MiB")
                && e.contains("payloads 290.0 MiB (300.0 MiB unpacked)")
                && e.contains("stays on the medium"),
            "{e}"
        );
        // Just over the line is refused, just under accepted.
        let spare = RAM_FLOOR - need;
        assert!(RamUse {
            payloads_unpacked: today.payloads_unpacked + spare,
            ..today
        }
        .check()
        .is_ok());
        assert!(RamUse {
            payloads_unpacked: today.payloads_unpacked + spare + 1,
            ..today
        }
        .check()
        .is_err());
    }

    #[test]
    fn dynamic_binaries_are_refused() {
        let me = std::env::current_exe().unwrap();
        let bin = std::fs::read(&me).unwrap();
        // The test binary itself is dynamically linked.
        let e = check_static(&bin, &me).unwrap_err().to_string();
        assert!(e.contains("dynamically linked"), "{e}");
        let e = check_static(b"#!/bin/sh\n", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a 64-bit ELF"), "{e}");
    }

    /// `--keys` takes a sealed file as it is (its passphrase is not known
    /// at build time), but only named `.age`, which the rescue looks at.
    #[test]
    fn keys_takes_sealed_files_named_age() {
        use defib_rescue::bitlocker::sealed::{seal, MIN_WORK_FACTOR};
        let d = tempfile::tempdir().unwrap();
        let bytes = seal(b"KeyID,RecoveryKey\r\n", "p", MIN_WORK_FACTOR).unwrap();
        let good = d.path().join("keys.csv.age");
        std::fs::write(&good, &bytes).unwrap();
        let files = key_files(std::slice::from_ref(&good)).unwrap();
        assert_eq!(files, [("keys.csv.age".to_string(), bytes.clone())]);
        let misnamed = d.path().join("keys.csv");
        std::fs::write(&misnamed, &bytes).unwrap();
        let e = format!("{:#}", key_files(&[misnamed]).unwrap_err());
        assert!(e.contains("must be named *.age"), "{e}");
        let mut cut = bytes.clone();
        cut.truncate(30);
        let broken = d.path().join("broken.age");
        std::fs::write(&broken, &cut).unwrap();
        let e = format!("{:#}", key_files(&[broken]).unwrap_err());
        assert!(e.contains("broken.age") && e.contains("damaged"), "{e}");
    }
}
