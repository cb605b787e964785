//! mTLS between Customs components.
//!
//! Every connection between gateway, scheduler and peers is mutually
//! authenticated against one CA. What a party may do comes from its
//! certificate, never from a field the caller sends, and a certificate names
//! two distinct things as DNS SANs the CA put there:
//!
//! - its **role**, `gateway.customs.internal`, `peer.customs.internal` or
//!   `scheduler.customs.internal` ([`Role::san`], checked by [`has_role`]);
//! - its **identity**, `<id>.node.customs.internal` ([`identity_san`],
//!   checked by [`is_named`]): the one node id (peer id; the gateway's seed
//!   id is `gateway`) its holder may speak for.
//!
//! The two name spaces cannot overlap (an identity always has the `node`
//! label, a role never does), so a role name never passes as an id and an
//! id never as a role, whatever the id is.
//!
//! Clients check the server's role, not the URL's host: [`TlsIdentity::client_config_for`]
//! (rustls, for reqwest) and [`TlsIdentity::tonic_client_for`] (tonic)
//! accept a server only when its certificate chains to the CA and carries
//! the expected role SAN. Listeners bound every connection: see [`https`].
//!
//! `customs certs` and `customs up` create a development CA with
//! [`write_dev_pki`] (role and identity names only, no `localhost`);
//! production deployments hand in their own files.
#![forbid(unsafe_code)]

pub mod https;
mod listener;
pub mod secret_file;
mod verifier;

pub use https::{PeerCertificate, serve_http, serve_mtls, serve_tls, serve_tls_with};
pub use listener::{
    Capped, HTTP_HEADER_READ_TIMEOUT, ListenerLimits, MAX_CONNECTIONS, RefusedConnections,
    TLS_HANDSHAKE_TIMEOUT, WRITE_STALL_TIMEOUT, tls_incoming,
};
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

    /// The role's name as `customs certs --issue NAME:ROLE` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Peer => "peer",
            Role::Scheduler => "scheduler",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s {
            "gateway" => Ok(Role::Gateway),
            "peer" => Ok(Role::Peer),
            "scheduler" => Ok(Role::Scheduler),
            other => Err(TlsError::Name(format!(
                "unknown role {other:?} (gateway, peer, scheduler)"
            ))),
        }
    }
}

/// The suffix of every identity SAN: `<id>.node.customs.internal`. Role SANs
/// are one label under `customs.internal` and never under `node`, so the two
/// name spaces are disjoint.
pub const IDENTITY_SUFFIX: &str = ".node.customs.internal";

/// The zone every role and identity name lives in; extra serving names
/// (`customs certs --san`) may not be under it.
const INTERNAL_ZONE: &str = "customs.internal";

/// The identity SAN of node `id` (`<id>.node.customs.internal`), or `None`
/// when `id` is not a valid node id (see [`valid_id`]).
pub fn identity_san(id: &str) -> Option<String> {
    valid_id(id).then(|| format!("{id}{IDENTITY_SUFFIX}"))
}

/// True for a usable node id: one DNS label (ASCII letters, digits and `-`,
/// 1 to 63 bytes, not starting or ending with `-`), so no dots and no
/// wildcards.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
        && id != WILDCARD_PROBE
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
    /// A certificate name, id, role or extra SAN is unusable.
    #[error("certificate name: {0}")]
    Name(String),
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

    /// True when this certificate carries `role` and names node `id`: what
    /// other members check when they reach a fleet member by that id.
    pub fn holds(&self, role: Role, id: &str) -> bool {
        self.certs
            .first()
            .is_some_and(|ee| has_role(ee, role) && is_named(ee, id))
    }

    /// True when this certificate carries `role` and node identity `id`
    /// and is not valid for `localhost`: what [`write_dev_pki`] issues today.
    /// `customs up` reissues development certificates that fail this (an
    /// older version gave them `localhost`, `127.0.0.1` and a role-shaped
    /// identity).
    pub fn is_dev_cert_for(&self, id: &str, role: Role) -> bool {
        let Some(ee) = self.certs.first() else {
            return false;
        };
        let localhost = webpki::EndEntityCert::try_from(ee).is_ok_and(|c| {
            ServerName::try_from("localhost")
                .is_ok_and(|n| c.verify_is_valid_for_subject_name(&n).is_ok())
        });
        has_role(ee, role) && is_named(ee, id) && !localhost
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|_| TlsError::Pem("private key".into()))
    }

    /// A server config that requires a client certificate from the CA
    /// (HTTP/1.1 over mTLS: the gateway's peer endpoint, piece servers).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.mtls_server_config(&[b"http/1.1"])
    }

    /// A server config for gRPC (ALPN `h2`) that requires a client
    /// certificate from the CA (the scheduler).
    pub fn grpc_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.mtls_server_config(&[b"h2"])
    }

    fn mtls_server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
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
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// A client config that trusts only the CA, presents this identity and
    /// accepts a server only when its certificate carries `role`'s SAN. The
    /// URL's host is ignored for verification: it is an address (often an
    /// IP), and an address proves nothing about who answers.
    pub fn client_config_for(&self, role: Role) -> Result<rustls::ClientConfig, TlsError> {
        self.client_config_for_any(&[role])
    }

    /// Like [`client_config_for`](Self::client_config_for), accepting a
    /// server that holds any one of `roles` (a piece parent is a peer or the
    /// gateway's seed).
    pub fn client_config_for_any(&self, roles: &[Role]) -> Result<rustls::ClientConfig, TlsError> {
        self.client_config_verifying(verifier::RoleVerifier::new(
            self.roots.clone(),
            provider(),
            roles,
        )?)
    }

    fn client_config_verifying(
        &self,
        verifier: verifier::RoleVerifier,
    ) -> Result<rustls::ClientConfig, TlsError> {
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.certs.clone(), self.key()?)?)
    }

    /// Like [`client_config_for`](Self::client_config_for), accepting only
    /// a server whose certificate also names node `id`
    /// (`<id>.node.customs.internal`): a gateway fetching a blob from the
    /// fleet member it chose, whose address came from the fleet store, which
    /// is not trusted to say who answers there.
    pub fn client_config_for_named(
        &self,
        role: Role,
        id: &str,
    ) -> Result<rustls::ClientConfig, TlsError> {
        self.client_config_verifying(
            verifier::RoleVerifier::new(self.roots.clone(), provider(), &[role])?.named(id),
        )
    }

    /// The same identity for a tonic client that requires the server to
    /// hold `role` (the scheduler): the role SAN is the name verified, not
    /// the URL's host.
    pub fn tonic_client_for(&self, role: Role) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(role.san())
    }
}

/// A server config for a listener that authenticates itself but asks
/// clients for no certificate (the gateway's containerd-facing HTTPS
/// endpoint: containerd has none). `cert` is a PEM chain, `key` its key.
pub fn serving_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem(cert.display().to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(cert.display().to_string()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| TlsError::Pem(key.display().to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
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

/// True when the (already CA-verified) end-entity certificate carries the
/// role and no other: a certificate with two role SANs is ambiguous (a peer
/// certificate that also says `gateway` could register tasks), so it holds
/// no role at all.
pub fn has_role(cert: &CertificateDer<'_>, role: Role) -> bool {
    has_dns_name(cert, role.san())
        && [Role::Gateway, Role::Peer, Role::Scheduler]
            .into_iter()
            .filter(|r| *r != role)
            .all(|other| !has_dns_name(cert, other.san()))
}

/// True when the certificate names node `id` (`<id>.node.customs.internal`):
/// binds a component's self-declared id (a peer id, the gateway's seed id)
/// to its certificate. A role SAN never satisfies it, whatever `id` is.
pub fn is_named(cert: &CertificateDer<'_>, id: &str) -> bool {
    identity_san(id).is_some_and(|san| has_dns_name(cert, &san))
}

/// A label no role or identity name ever has ([`valid_id`] refuses it as an
/// id): a certificate valid for a name with this label is a wildcard
/// certificate.
const WILDCARD_PROBE: &str = "customs-wildcard-probe";

/// True when `cert` is valid for exactly `dns`: webpki matches wildcard
/// SANs, so a certificate that is also valid for a name no component is
/// ever given (`customs-wildcard-probe` in place of the first label) holds
/// a wildcard and names nobody: `*.customs.internal` would otherwise carry
/// every role and `*.node.customs.internal` every identity.
fn has_dns_name(cert: &CertificateDer<'_>, dns: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let valid_for = |n: &str| {
        ServerName::try_from(n).is_ok_and(|name| ee.verify_is_valid_for_subject_name(&name).is_ok())
    };
    let probe = match dns.split_once('.') {
        Some((_, parent)) => format!("{WILDCARD_PROBE}.{parent}"),
        None => return false,
    };
    valid_for(dns) && !valid_for(&probe)
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

/// An extra name on a serving certificate (`customs certs --san`): the
/// public DNS name or address containerd reaches the gateway at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraName {
    /// A DNS name (no wildcard, not under `customs.internal`).
    Dns(String),
    /// An IP address.
    Ip(std::net::IpAddr),
}

impl std::str::FromStr for ExtraName {
    type Err = TlsError;

    /// Parses an IP address or a DNS name. Names under `customs.internal`
    /// are refused (an extra SAN must never add a role or an identity), and
    /// so are wildcards.
    fn from_str(s: &str) -> Result<Self, TlsError> {
        if let Ok(ip) = s.parse() {
            return Ok(ExtraName::Ip(ip));
        }
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        if lower == INTERNAL_ZONE || lower.ends_with(&format!(".{INTERNAL_ZONE}")) {
            return Err(TlsError::Name(format!(
                "extra name {s:?} is under {INTERNAL_ZONE}, where only roles and node identities live"
            )));
        }
        if lower.contains('*') || ServerName::try_from(lower.as_str()).is_err() {
            return Err(TlsError::Name(format!(
                "extra name {s:?} is not a DNS name or IP address (wildcards are refused)"
            )));
        }
        Ok(ExtraName::Dns(lower))
    }
}

/// One certificate to issue from the development CA.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// The node id: file names `<id>.pem`/`<id>.key` and the identity SAN
    /// `<id>.node.customs.internal`.
    pub id: String,
    /// The role SAN it carries.
    pub role: Role,
    /// Extra serving names (public DNS names, addresses); none by default.
    pub extra: Vec<ExtraName>,
}

/// Creates a development CA under `dir` (or reuses the one there) and issues
/// a certificate for each `(id, role)` that carries only the role's SAN and
/// the node's identity SAN (`<id>.node.customs.internal`): no `localhost`,
/// no address, so it authenticates a role and a node, never a location.
pub fn write_dev_pki(dir: &Path, names: &[(&str, Role)]) -> Result<(), TlsError> {
    let requests: Vec<CertRequest> = names
        .iter()
        .map(|(id, role)| CertRequest {
            id: (*id).to_owned(),
            role: *role,
            extra: Vec::new(),
        })
        .collect();
    write_pki(dir, &requests)
}

/// Like [`write_dev_pki`], with extra serving names per certificate (an
/// operator's cert for the gateway's HTTPS endpoint).
pub fn write_pki(dir: &Path, requests: &[CertRequest]) -> Result<(), TlsError> {
    for r in requests {
        if !valid_id(&r.id) {
            return Err(TlsError::Name(format!(
                "node id {:?} must be one DNS label: letters, digits and '-'",
                r.id
            )));
        }
    }
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
    for r in requests {
        let name = r.id.as_str();
        let identity =
            identity_san(name).ok_or_else(|| TlsError::Name(format!("node id {name:?}")))?;
        let mut p = rcgen::CertificateParams::new(vec![r.role.san().to_owned(), identity])?;
        for extra in &r.extra {
            p.subject_alt_names.push(match extra {
                ExtraName::Dns(d) => rcgen::SanType::DnsName(
                    d.as_str()
                        .try_into()
                        .map_err(|_| TlsError::Name(format!("extra name {d:?}")))?,
                ),
                ExtraName::Ip(ip) => rcgen::SanType::IpAddress(*ip),
            });
        }
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
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
        gw.grpc_server_config().unwrap();
        p2.client_config_for(Role::Gateway).unwrap();
        assert!(p2.client_config_for_any(&[]).is_err());
        assert!(TlsIdentity::load(&TlsPaths::in_dir(dir.path(), "missing")).is_err());
    }

    /// Finding 3's root cause: the role SAN `peer.customs.internal` was also
    /// the identity of a peer named "peer", so one certificate spoke for two
    /// ids. Identity and role names are now disjoint.
    #[test]
    fn identity_and_role_cannot_stand_in_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            ("peer", Role::Peer),
            ("gateway", Role::Peer),
            ("scheduler", Role::Peer),
            ("p1", Role::Peer),
            ("gateway-seed", Role::Gateway),
        ];
        write_dev_pki(dir.path(), &names).unwrap();
        let cert = |n: &str| {
            TlsIdentity::load(&TlsPaths::in_dir(dir.path(), n))
                .unwrap()
                .certs[0]
                .clone()
        };
        // Any peer's role SAN never names a node: not "peer", nor any role.
        let p1 = cert("p1");
        for role_name in ["peer", "gateway", "scheduler"] {
            assert!(!is_named(&p1, role_name), "p1 passed as node {role_name:?}");
        }
        // A peer named like a role is that node, and still only a peer.
        let named_gateway = cert("gateway");
        assert!(is_named(&named_gateway, "gateway"));
        assert!(!has_role(&named_gateway, Role::Gateway));
        assert!(!has_role(&cert("scheduler"), Role::Scheduler));
        assert!(has_role(&cert("peer"), Role::Peer));
        assert!(is_named(&cert("peer"), "peer"));
        assert!(!is_named(&cert("peer"), "p1"));
        // The gateway's identity is its own, not its role.
        let gw = cert("gateway-seed");
        assert!(has_role(&gw, Role::Gateway));
        assert!(is_named(&gw, "gateway-seed"));
        assert!(!is_named(&gw, "gateway"));
        // Ids are single labels: nothing that could reach into other names.
        for bad in [
            "",
            "a.b",
            "*",
            "node.customs",
            "-x",
            "x-",
            "customs-wildcard-probe",
        ] {
            assert!(!valid_id(bad), "{bad:?}");
            assert!(!is_named(&p1, bad));
        }
        assert_eq!(
            identity_san("p1").as_deref(),
            Some("p1.node.customs.internal")
        );
    }

    #[test]
    fn dev_certificates_name_no_location() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_pki(dir.path(), &[("gateway", Role::Gateway)]).unwrap();
        let c = TlsIdentity::load(&TlsPaths::in_dir(dir.path(), "gateway"))
            .unwrap()
            .certs[0]
            .clone();
        let ee = webpki::EndEntityCert::try_from(&c).unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            let n = ServerName::try_from(name).unwrap();
            assert!(
                ee.verify_is_valid_for_subject_name(&n).is_err(),
                "dev certificate valid for {name}"
            );
        }
        assert!(has_dns_name(&c, "gateway.customs.internal"));
        assert!(has_dns_name(&c, "gateway.node.customs.internal"));
    }

    #[test]
    fn a_wildcard_certificate_carries_no_role_and_no_identity() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_pki(dir.path(), &[("x", Role::Peer)]).unwrap();
        // Issue a wildcard certificate from the same CA by hand (the dev
        // tooling refuses to).
        let pem = String::from_utf8(std::fs::read(dir.path().join("ca.key")).unwrap()).unwrap();
        let issuer = rcgen::Issuer::new(
            ca_params().unwrap(),
            rcgen::KeyPair::from_pem(&pem).unwrap(),
        );
        let p = rcgen::CertificateParams::new(vec![
            "*.customs.internal".to_owned(),
            "*.node.customs.internal".to_owned(),
        ])
        .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = p.signed_by(&key, &issuer).unwrap();
        let der = CertificateDer::from(c.der().to_vec());
        for role in [Role::Gateway, Role::Peer, Role::Scheduler] {
            assert!(!has_role(&der, role));
        }
        assert!(!is_named(&der, "p1"));
        // Extra serving names cannot add them either.
        assert!("*.customs.internal".parse::<ExtraName>().is_err());
        assert!("peer.customs.internal".parse::<ExtraName>().is_err());
        assert!("Registry.Example".parse::<ExtraName>().is_ok());
    }
}
