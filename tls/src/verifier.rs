//! The client side of role checks: a server is accepted when its
//! certificate chains to the CA and carries the role the client expects.
//!
//! rustls' own verifier checks the name in the URL. Customs components are
//! reached by address (`https://10.0.3.7:5051`, `https://127.0.0.1:PORT`),
//! and an address proves nothing about who answers: any certificate from
//! the CA that lists the address, or `localhost`, would pass. So the name
//! checked is the role's SAN, whatever the URL says.

use crate::{Role, TlsError, has_role, is_named};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use std::sync::Arc;

/// Verifies the chain with webpki against the CA for one of `roles`' SANs,
/// ignoring the server name the connection was opened with.
#[derive(Debug)]
pub(crate) struct RoleVerifier {
    inner: Arc<WebPkiServerVerifier>,
    roles: Vec<Role>,
    /// The node id the certificate must also name, when the client knows
    /// whom it is calling (a gateway asking the fleet member it chose).
    named: Option<String>,
}

impl RoleVerifier {
    pub(crate) fn new(
        roots: Arc<rustls::RootCertStore>,
        provider: Arc<rustls::crypto::CryptoProvider>,
        roles: &[Role],
    ) -> Result<Self, TlsError> {
        if roles.is_empty() {
            return Err(TlsError::Verifier("no server role to expect".into()));
        }
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(RoleVerifier {
            inner,
            roles: roles.to_vec(),
            named: None,
        })
    }

    /// Also requires the certificate to name node `id`.
    pub(crate) fn named(mut self, id: &str) -> Self {
        self.named = Some(id.to_owned());
        self
    }
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let mut last = Error::InvalidCertificate(CertificateError::NotValidForName);
        for role in &self.roles {
            let name = ServerName::try_from(role.san())
                .map_err(|_| Error::General(format!("role name {}", role.san())))?;
            match self.inner.verify_server_cert(
                end_entity,
                intermediates,
                &name,
                ocsp_response,
                now,
            ) {
                // webpki also accepts a wildcard; the role must be named exactly.
                Ok(v) if has_role(end_entity, *role) => {
                    return match &self.named {
                        Some(id) if !is_named(end_entity, id) => {
                            tracing::warn!(expected = %id, "refused a server whose certificate does not name the node it was asked as");
                            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
                        }
                        _ => Ok(v),
                    };
                }
                Ok(_) => {}
                Err(
                    e @ Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    ),
                ) => last = e,
                // A bad chain, an expired certificate...: no role helps.
                Err(e) => return Err(e),
            }
        }
        tracing::warn!(expected = ?self.roles, "refused a server whose certificate does not carry the expected role");
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
