//! mTLS between Customs components.
//!
//! Every connection between gateway, scheduler and peers is mutually
//! authenticated against one CA. What a party may do comes from its
//! certificate: a role name (`gateway.customs.internal`,
//! `peer.customs.internal`, `scheduler.customs.internal`) is a DNS SAN the CA
//! put there, checked with webpki, never a field the caller sends.
//!
//! `customs certs` and `customs up` create a development CA with
//! [`write_dev_pki`]; production deployments hand in their own files.
#![forbid(unsafe_code)]

pub mod https;
pub mod secret_file;

pub use https::{PeerCertificate, RefusedConnections, serve_mtls};
pub use secret_file::{
    SecretFileError, check_private, private_dir, read_private, read_token, write_private,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a certificate holder is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The gateway: may register tasks with the scheduler.
    Gateway,
    /// A node peer: may announce, ask for tasks, fetch and serve pieces.
    Peer,
    /// The scheduler.
    Scheduler,
}

impl Role {
    /// The DNS SAN that marks the role.
    pub fn san(self) -> &'static str {
        match self {
            Role::Gateway => "gateway.customs.internal",
            Role::Peer => "peer.customs.internal",
            Role::Scheduler => "scheduler.customs.internal",
        }
    }
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("TLS file {path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// PEM without the expected content.
    #[error("TLS file {0}: no usable certificate or key")]
    Pem(String),
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A private key file is exposed or unwritable.
    #[error(transparent)]
    Secret(#[from] SecretFileError),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Paths of a component's TLS files.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// The CA that signs every component's certificate.
    pub ca: PathBuf,
    /// This component's certificate chain.
    pub cert: PathBuf,
    /// This component's private key.
    pub key: PathBuf,
}

impl TlsPaths {
    /// The files `write_dev_pki` writes for `name` under `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsPaths {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// A loaded identity: CA roots, certificate chain and key.
pub struct TlsIdentity {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    roots: Arc<rustls::RootCertStore>,
    certs: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsIdentity {
    /// Loads and checks the files.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        let ca_pem = read(&paths.ca)?;
        let cert_pem = read(&paths.cert)?;
        let key_pem = read_private(&paths.key)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca_pem) {
            let c = c.map_err(|_| TlsError::Pem(paths.ca.display().to_string()))?;
            roots.add(c)?;
        }
        if roots.is_empty() {
            return Err(TlsError::Pem(paths.ca.display().to_string()));
        }
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Pem(paths.cert.display().to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::Pem(paths.cert.display().to_string()));
        }
        PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| TlsError::Pem(paths.key.display().to_string()))?;
        Ok(TlsIdentity {
            ca_pem,
            cert_pem,
            key_pem,
            roots: Arc::new(roots),
            certs,
        })
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|_| TlsError::Pem("private key".into()))
    }

    /// A server config that requires a client certificate from the CA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key()?)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A client config that trusts only the CA and presents this identity.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.certs.clone(), self.key()?)?)
    }

    /// The same identity for a tonic server (client certificates required).
    pub fn tonic_server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
    }

    /// The same identity for a tonic client; `domain` is the name the
    /// server's certificate must carry.
    pub fn tonic_client(&self, domain: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(domain)
    }
}

/// A TLS client configuration that trusts the CA certificates in `ca_pem`
/// and presents no client certificate (e.g. a SIEM's syslog-over-TLS port).
pub fn client_config_trusting(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| TlsError::Pem(e.to_string()))?;
        roots.add(c)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem("CA bundle".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// True when the (already CA-verified) end-entity certificate carries the role.
pub fn has_role(cert: &CertificateDer<'_>, role: Role) -> bool {
    has_dns_name(cert, role.san())
}

/// True when the certificate names `<name>.customs.internal`: binds a
/// component's self-declared id (e.g. a peer id) to its certificate.
pub fn is_named(cert: &CertificateDer<'_>, name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['.', '*'])
        && has_dns_name(cert, &format!("{name}.customs.internal"))
}

fn has_dns_name(cert: &CertificateDer<'_>, dns: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(dns) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

const CA_NAME: &str = "Customs development CA";

fn ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, CA_NAME);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ok(p)
}

fn write(path: &Path, data: &str) -> Result<(), TlsError> {
    std::fs::write(path, data).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Creates a development CA under `dir` (or reuses the one there) and issues
/// a certificate for each `(name, role)`, valid for `localhost`,
/// `127.0.0.1`, the role's SAN and `<name>.customs.internal`.
pub fn write_dev_pki(dir: &Path, names: &[(&str, Role)]) -> Result<(), TlsError> {
    private_dir(dir)?;
    let ca_key_path = dir.join("ca.key");
    let ca_key = if ca_key_path.exists() {
        let pem = String::from_utf8_lossy(&read_private(&ca_key_path)?).into_owned();
        rcgen::KeyPair::from_pem(&pem)?
    } else {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        write_private(&ca_key_path, k.serialize_pem().as_bytes())?;
        let cert = ca_params()?.self_signed(&k)?;
        write(&dir.join("ca.pem"), &cert.pem())?;
        k
    };
    let issuer = rcgen::Issuer::new(ca_params()?, ca_key);
    for (name, role) in names {
        let mut p = rcgen::CertificateParams::new(vec![
            "localhost".to_owned(),
            role.san().to_owned(),
            format!("{name}.customs.internal"),
        ])?;
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([
                127, 0, 0, 1,
            ])));
        p.distinguished_name.push(rcgen::DnType::CommonName, *name);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = p.signed_by(&key, &issuer)?;
        write(&dir.join(format!("{name}.pem")), &cert.pem())?;
        write_private(
            &dir.join(format!("{name}.key")),
            key.serialize_pem().as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_pki_roles_and_configs() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_pki(dir.path(), &[("gw", Role::Gateway), ("p1", Role::Peer)]).unwrap();
        // Reusing the CA for another certificate keeps one trust root.
        write_dev_pki(dir.path(), &[("p2", Role::Peer)]).unwrap();
        let gw = TlsIdentity::load(&TlsPaths::in_dir(dir.path(), "gw")).unwrap();
        let p2 = TlsIdentity::load(&TlsPaths::in_dir(dir.path(), "p2")).unwrap();
        assert!(has_role(&gw.certs[0], Role::Gateway));
        assert!(!has_role(&gw.certs[0], Role::Peer));
        assert!(has_role(&p2.certs[0], Role::Peer));
        assert!(is_named(&p2.certs[0], "p2"));
        assert!(!is_named(&p2.certs[0], "p1"));
        assert!(!is_named(&p2.certs[0], "*"));
        assert!(!has_role(&p2.certs[0], Role::Gateway));
        gw.server_config().unwrap();
        p2.client_config().unwrap();
        assert!(TlsIdentity::load(&TlsPaths::in_dir(dir.path(), "missing")).is_err());
    }
}
