//! rustls certificate verifiers that authenticate SPIFFE IDs.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{Authorities, SpiffeIdAuthorizer, TlsError, leaf_spiffe_id, provider};

/// What both verifiers do: path validation, then SPIFFE ID extraction and authorisation.
#[derive(Debug)]
struct Core {
    authorities: Authorities,
    authorizer: SpiffeIdAuthorizer,
    algs: WebPkiSupportedAlgorithms,
}

impl Core {
    fn new(authorities: Authorities, authorizer: SpiffeIdAuthorizer) -> Self {
        Core {
            authorities,
            authorizer,
            algs: provider().signature_verification_algorithms,
        }
    }

    /// The authorised SPIFFE ID of a chain, or the rustls error that aborts the handshake.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<String, rustls::Error> {
        let anchors = self.authorities.snapshot();
        let leaf = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        leaf.verify_for_usage(
            self.algs.all,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        let id = leaf_spiffe_id(end_entity).map_err(spiffe_error)?;
        // An authority vouches only for its own trust domain (Trust Domain and Bundle §6.4).
        if id.trust_domain() != self.authorities.trust_domain() {
            return Err(spiffe_error(TlsError::WrongTrustDomain {
                id: id.into_string(),
                expected: self.authorities.trust_domain().to_string(),
            }));
        }
        self.authorizer
            .authorize(id.as_str())
            .map_err(spiffe_error)?;
        Ok(id.into_string())
    }
}

fn spiffe_error(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// webpki's verdict as the rustls error its own verifiers would give.
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let c = match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        W::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        W::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        W::InvalidCertValidity => CertificateError::Expired,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(c)
}

/// For TLS clients: authenticates the server's X.509-SVID. The DNS name the client dialled is
/// ignored; the server's SPIFFE ID must pass the authorizer.
#[derive(Debug)]
pub struct SpiffeServerVerifier(Core);

impl SpiffeServerVerifier {
    /// Validate server chains against `authorities` and allow IDs `authorizer` allows.
    pub fn new(authorities: Authorities, authorizer: SpiffeIdAuthorizer) -> Self {
        Self(Core::new(authorities, authorizer))
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algs.supported_schemes()
    }
}

/// For TLS servers: authenticates the client's X.509-SVID.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    core: Core,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// Client authentication required: a client without an SVID is refused.
    pub fn new(authorities: Authorities, authorizer: SpiffeIdAuthorizer) -> Self {
        Self {
            core: Core::new(authorities, authorizer),
            mandatory: true,
        }
    }

    /// Client authentication optional: a client may present no certificate (the server then
    /// sees no peer certificates), but one that does present one is verified as in
    /// [`SpiffeClientVerifier::new`].
    pub fn optional(authorities: Authorities, authorizer: SpiffeIdAuthorizer) -> Self {
        Self {
            core: Core::new(authorities, authorizer),
            mandatory: false,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // SVID clients hold one identity; hints would only go stale across rotations.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.core.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.core.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.core.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.algs.supported_schemes()
    }
}
