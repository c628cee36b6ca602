//! Telling a TLS misconfiguration (an untrusted server, a refused client certificate) apart
//! from a server that is merely down, so processes stop and name the flag to fix instead of
//! retrying forever.

use std::error::Error as StdError;
use std::path::Path;

use crate::RuntimeError;

/// The TLS flags of one connection, named in the error when its TLS fails.
#[derive(Debug, Clone, Copy)]
pub struct TlsFlags {
    /// The CA flag (`--nats-ca`): the server's certificate did not verify against it.
    pub ca: &'static str,
    /// The client certificate flag (`--nats-cert`): the server refused our certificate.
    pub cert: &'static str,
}

/// The file `flag` names, read whole; one that cannot be read is an error naming the flag.
pub fn read_flag_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path).map_err(|source| RuntimeError::File {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// A client identity as reqwest takes it: the certificate, then the key, in one PEM.
pub fn identity_pem(
    cert: (&'static str, &Path),
    key: (&'static str, &Path),
) -> Result<Vec<u8>, RuntimeError> {
    let mut pem = read_flag_file(cert.0, cert.1)?;
    pem.push(b'\n');
    pem.extend(read_flag_file(key.0, key.1)?);
    Ok(pem)
}

/// The rustls error somewhere in `err`'s chain of causes (`std::io::Error` hides its inner
/// error from `source()`, so it is opened explicitly).
pub fn rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if let Some(tls) = inner.and_then(|inner| rustls_error(inner)) {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

/// Whether the server refused us (an alert about our certificate) rather than us refusing it.
fn client_refused(err: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        err,
        rustls::Error::AlertReceived(
            A::BadCertificate
                | A::UnknownCA
                | A::CertificateRequired
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied
        )
    )
}

/// A TLS failure in `err`'s causes, as the error naming the flag to fix; `None` for every
/// other failure (a refused connection, a timeout), which is worth retrying.
pub fn misconfigured(
    err: &(dyn StdError + 'static),
    server: &str,
    flags: TlsFlags,
) -> Option<RuntimeError> {
    let tls = rustls_error(err)?;
    let (flag, problem) = if client_refused(tls) {
        (flags.cert, "the server refused our client certificate")
    } else {
        (flags.ca, "the server's certificate is not trusted")
    };
    Some(RuntimeError::Tls {
        server: server.to_owned(),
        flag,
        problem,
        source: tls.clone(),
    })
}

/// Installs ring as the process's rustls provider (idempotent). Each `main` calls it once at
/// start, before any client is built: the HTTP clients (Consul, etcd's v2 API) use reqwest
/// without a provider of its own, so a library constructor never installs one behind the
/// process's back.
pub fn install_crypto_provider() {
    // Err only when a provider is installed already: the one wanted.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: TlsFlags = TlsFlags {
        ca: "--x-ca",
        cert: "--x-cert",
    };

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_unknown_issuer_inside_an_io_error_names_the_ca_flag() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let err = Outer(std::io::Error::other(tls));
        let found = misconfigured(&err, "nats://127.0.0.1:4222", FLAGS).expect("a TLS failure");
        let text = found.to_string();
        assert!(text.contains("--x-ca"), "{text}");
        assert!(text.contains("127.0.0.1:4222"), "{text}");
    }

    #[test]
    fn a_refused_client_certificate_names_the_cert_flag() {
        let tls = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let err = std::io::Error::other(tls);
        let text = misconfigured(&err, "s", FLAGS)
            .expect("a TLS failure")
            .to_string();
        assert!(text.contains("--x-cert"), "{text}");
    }

    #[test]
    fn a_refused_connection_is_not_a_tls_failure() {
        let err = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(misconfigured(&err, "s", FLAGS).is_none());
    }
}
