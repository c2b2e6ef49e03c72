//! Durable writes: a file is either its old self or the whole new one,
//! whatever happens to the power or the stick. Not a general file layer;
//! victim-volume writes that need a vault and a journal are `journal`'s.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `data` as `dir/name` so that a crash or a pulled stick leaves
/// either the old state or the whole file: write a temp name in the same
/// directory, fsync it, rename over, fsync the directory.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    // A temp file left by an earlier crash is ours to replace.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        // A stale temp from a crashed run must not block the write.
        fs::write(dir.path().join(".r.json.tmp"), "stale").unwrap();
        let p = write_atomic(dir.path(), "r.json", b"one").unwrap();
        assert_eq!(p, dir.path().join("r.json"));
        write_atomic(dir.path(), "r.json", b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.json")]);
    }

    #[test]
    fn atomic_write_reports_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(&dir.path().join("nope"), "r.json", b"x").unwrap_err();
        assert!(format!("{err:#}").contains("creating"));
    }
}
