//! HTTPS for the rescue's one exchange, trusting exactly one certificate:
//! the one whose SHA-256 the kernel command line pins (`defib.tls=sha256:…`,
//! written by `defib serve`).
//!
//! Pinning instead of a CA chain: a rescue has no trust store worth the
//! name, its clock may be years off (a dead CMOS battery), and `defib serve`
//! makes its own certificate on a laptop with no CA behind it. The pin says
//! exactly which server may receive a report or hand out a key. What TLS
//! still proves, and rustls checks: the server holds that certificate's
//! private key (the handshake signature), and nobody on the wire can read
//! or change the exchange. Names, dates and chains are not looked at.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest, Sha256};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};

// The pin's parsing and printing live with the command line (bootargs),
// which host-safe code reads too; this module is the TLS that uses it.
pub use crate::bootargs::{parse_pin, pin_short, pin_text, Pin};

/// The kernel command line key.
pub const PIN_ARG: &str = crate::layout::keys::TLS;

static BOOT_PIN: OnceLock<Pin> = OnceLock::new();

/// Records the pin from the kernel command line; PID 1 calls it once at
/// start. A second call is ignored (the command line does not change).
pub fn set_boot_pin(pin: Pin) {
    let _ = BOOT_PIN.set(pin);
}

/// The pin from the kernel command line, if there was one.
pub fn boot_pin() -> Option<&'static Pin> {
    BOOT_PIN.get()
}

/// Accepts the one certificate whose SHA-256 is `pin`, whatever its names,
/// dates or issuer; the handshake signatures are checked with ring's
/// algorithms, so the server must hold its private key.
#[derive(Debug)]
struct Pinned {
    pin: Pin,
    /// The fingerprint the server showed, for the refusal message.
    seen: Mutex<Option<Pin>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: Pin = Sha256::digest(end_entity.as_ref()).into();
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(got);
        }
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS stream over `tcp`, its handshake done.
pub type Stream = StreamOwned<ClientConnection, TcpStream>;

/// Does the handshake with `addr` over `tcp` and returns the stream, or a
/// line saying why not: the server's certificate is not the pinned one
/// (naming both fingerprints), or the handshake failed.
pub fn connect(mut tcp: TcpStream, addr: SocketAddr, pin: &Pin) -> Result<Stream, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        pin: *pin,
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut conn = ClientConnection::new(Arc::new(config), name)
        .map_err(|e| format!("TLS setup for {addr}: {e}"))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            let seen = verifier.seen.lock().ok().and_then(|s| *s);
            return Err(match seen {
                Some(got) if got != *pin => format!(
                    "{addr} showed a certificate with {}, not the pinned {} (defib.tls=): \
                     refusing to talk to it; is this the defib serve that booted this PC?",
                    pin_short(&got),
                    pin_short(pin)
                ),
                _ => format!("TLS handshake with {addr}: {e}"),
            });
        }
    }
    Ok(StreamOwned::new(conn, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_read_as_openssl_and_defib_serve_print_them() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let p = parse_pin(&format!("sha256:{hex}")).unwrap();
        assert_eq!(p[0], 0x00);
        assert_eq!(p[31], 0xff);
        assert_eq!(pin_text(&p), format!("sha256:{hex}"));
        assert_eq!(pin_short(&p), "sha256:0011223344556677");
        let colons: Vec<String> = (0..32)
            .map(|i| hex[2 * i..2 * i + 2].to_ascii_uppercase())
            .collect();
        assert_eq!(
            parse_pin(&format!("SHA256:{}", colons.join(":"))).unwrap(),
            p
        );
        for bad in [
            hex.to_string(),
            format!("sha1:{hex}"),
            format!("sha256:{}", &hex[..62]),
            format!("sha256:{}zz", &hex[..62]),
            "sha256:".to_string(),
        ] {
            assert!(parse_pin(&bad).is_err(), "{bad}");
        }
    }
}
