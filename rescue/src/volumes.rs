//! The kernel side of Windows volumes: read the raw device, mount it with
//! ntfs3 under `/run/defib/vol/<dev>`, unmount. Deliberately thin; the
//! decisions are in `repair`.

use crate::repair::VolumeOps;
use crate::report::BitlockerState;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct KernelVolumes {
    root: PathBuf,
    mounted: BTreeMap<String, PathBuf>,
}

impl KernelVolumes {
    pub fn new(root: &Path) -> KernelVolumes {
        KernelVolumes {
            root: root.to_path_buf(),
            mounted: BTreeMap::new(),
        }
    }

    fn dev(&self, dev: &str) -> PathBuf {
        if dev.starts_with('/') {
            PathBuf::from(dev)
        } else {
            self.root.join("dev").join(dev)
        }
    }

    fn open(&self, dev: &str) -> Result<std::fs::File> {
        let p = self.dev(dev);
        std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))
    }

    /// Unmounts everything still mounted, syncing first.
    pub fn umount_all(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        let names: Vec<String> = self.mounted.keys().cloned().collect();
        for n in names {
            if let Err(e) = self.umount(&n) {
                errs.push(format!("{e:#}"));
            }
        }
        errs
    }
}

impl VolumeOps for KernelVolumes {
    fn bitlocker(&mut self, dev: &str) -> Result<BitlockerState> {
        let mut f = self.open(dev)?;
        let b = crate::volstate::read_bitlocker(&mut f, 0)?;
        Ok(BitlockerState {
            encryption_method: b.encryption_method,
            key_protectors: b
                .key_protectors
                .iter()
                .map(|k| format!("{} ({})", k.guid, k.kind))
                .collect(),
        })
    }

    fn ntfs_dirty(&mut self, dev: &str) -> Result<bool> {
        let mut f = self.open(dev)?;
        Ok(crate::volstate::read_ntfs_state(&mut f, 0)?.dirty)
    }

    fn mount(&mut self, dev: &str, rw: bool, force: bool) -> Result<PathBuf> {
        use rustix::mount::{mount, MountFlags};
        let name = dev.rsplit('/').next().unwrap_or(dev);
        let target = self.root.join("run/defib/vol").join(name);
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let flags = if rw {
            MountFlags::NOATIME
        } else {
            MountFlags::RDONLY
        };
        // ntfs3 mount options (Documentation/filesystems/ntfs3.rst): `force`
        // allows read-write on a dirty volume; nothing else is needed.
        let data: Option<&std::ffi::CStr> = if force { Some(c"force") } else { None };
        mount(self.dev(dev), &target, "ntfs3", flags, data).with_context(|| {
            format!(
                "mounting /dev/{name} with ntfs3 ({})",
                if rw { "read-write" } else { "read-only" }
            )
        })?;
        self.mounted.insert(dev.to_string(), target.clone());
        Ok(target)
    }

    fn umount(&mut self, dev: &str) -> Result<()> {
        let Some(t) = self.mounted.remove(dev) else {
            return Ok(());
        };
        rustix::fs::sync();
        rustix::mount::unmount(&t, rustix::mount::UnmountFlags::empty())
            .with_context(|| format!("unmounting {}", t.display()))
    }
}
