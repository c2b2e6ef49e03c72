//! `defib serve`'s certificate: made once per TLS folder (ECDSA P-256,
//! through rcgen), kept for the next start, and pinned on every kernel
//! command line by its SHA-256 (`defib.tls=sha256:…`). Nobody has to trust
//! it but the rescues the same `defib serve` boots; no CA is involved.
//!
//! Kept, not made at every start: a PC still at its BitLocker prompt when
//! the admin restarts `defib serve` booted with the old pin, and its report
//! must still be taken.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Where a root `defib serve` keeps its certificate by default.
pub const DEFAULT_DIR: &str = "/var/lib/defib/serve-tls";
const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";

/// The certificate nginx serves and the rescue pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the certificate's DER.
    pub sha256: [u8; 32],
    /// Made by this call (not found from an earlier start).
    pub created: bool,
}

impl ServerCert {
    /// `sha256:<64 hex>`, the value of `defib.tls=`.
    pub fn pin(&self) -> String {
        defib_rescue::pid1::net::tls::pin_text(&self.sha256)
    }
}

/// The certificate in `dir`, made first if `dir` holds none. `address` goes
/// into a new certificate's names (for people who look at it; the rescue
/// checks the pin only). A folder with one of the two files, or a file that
/// is not a certificate, is an error naming it: it is never overwritten.
pub fn load_or_create(dir: &Path, address: Ipv4Addr) -> Result<ServerCert> {
    let (cert, key) = (dir.join(CERT), dir.join(KEY));
    if !dir.exists() {
        create(dir, address)?;
        let mut c = load(&cert, &key)?;
        c.created = true;
        return Ok(c);
    }
    match (cert.exists(), key.exists()) {
        (true, true) => load(&cert, &key),
        _ => bail!(
            "{} exists but does not hold both {CERT} and {KEY}: remove it (a new \
             certificate is then made) or point --tls-dir at another folder",
            dir.display()
        ),
    }
}

fn load(cert: &Path, key: &Path) -> Result<ServerCert> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(cert).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a PEM certificate ({e}); remove its folder and a new one is made",
            cert.display()
        )
    })?;
    rustls_pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a PEM private key ({e}); remove its folder and a new one is made",
            key.display()
        )
    })?;
    Ok(ServerCert {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        sha256: Sha256::digest(der.as_ref()).into(),
        created: false,
    })
}

/// Makes the pair in a temporary folder beside `dir` and renames it into
/// place, so a crash or a second `defib serve` starting at the same time
/// never leaves half a pair (the loser of the rename uses the winner's).
fn create(dir: &Path, address: Ipv4Addr) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".defib-tls.")
        .tempdir_in(parent)
        .with_context(|| format!("creating a folder in {}", parent.display()))?;
    let key = rcgen::KeyPair::generate().context("making the server's key")?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).context("certificate parameters")?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(address.into()));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("defib serve {address}"));
    let cert = params
        .self_signed(&key)
        .context("signing the server's certificate")?;
    let write = |name: &str, text: &str, mode: u32| -> Result<()> {
        let p = tmp.path().join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", p.display()))
    };
    write(KEY, &key.serialize_pem(), 0o600)?;
    write(CERT, &cert.pem(), 0o644)?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700))?;
    let tmp = tmp.keep();
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another start won the race: use its pair.
        Err(_) if dir.join(CERT).exists() && dir.join(KEY).exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e).with_context(|| format!("moving the new certificate to {}", dir.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept_and_its_pin_is_the_der_hash() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("tls");
        let a = load_or_create(&dir, Ipv4Addr::new(10, 77, 0, 1)).unwrap();
        assert!(a.created);
        let b = load_or_create(&dir, Ipv4Addr::new(10, 77, 0, 1)).unwrap();
        assert!(!b.created);
        assert_eq!(a.sha256, b.sha256);
        assert!(a.pin().starts_with("sha256:") && a.pin().len() == 71);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&a.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is the owner's only");
        // The pin is what the rescue computes from the DER the server sends.
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_file(&a.cert).unwrap();
        let want: [u8; 32] = Sha256::digest(der.as_ref()).into();
        assert_eq!(a.sha256, want);
        // Another folder, another certificate.
        let c = load_or_create(&t.path().join("other"), Ipv4Addr::new(10, 77, 0, 1)).unwrap();
        assert_ne!(c.sha256, a.sha256);
    }

    #[test]
    fn half_a_pair_or_a_bad_file_is_named_and_never_overwritten() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("tls");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(CERT), "x").unwrap();
        let e = load_or_create(&dir, Ipv4Addr::LOCALHOST).unwrap_err();
        assert!(e.to_string().contains("does not hold both"), "{e:#}");
        std::fs::write(dir.join(KEY), "y").unwrap();
        let e = load_or_create(&dir, Ipv4Addr::LOCALHOST).unwrap_err();
        assert!(e.to_string().contains("not a PEM certificate"), "{e:#}");
        assert_eq!(std::fs::read_to_string(dir.join(CERT)).unwrap(), "x");
    }
}
