//! Real TLS handshakes in memory: two rustls connections pump bytes through Vec buffers.

use super::*;
use mayfly_crypto::x509::{X509Ca, new_svid_key_and_csr};
use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::ServerName;

const TD: &str = "example.org";
const SERVER_ID: &str = "spiffe://example.org/server";
const CLIENT_ID: &str = "spiffe://example.org/client";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn new_ca(td: &str) -> X509Ca {
    X509Ca::self_signed(td, now() - 86_400, now() + 86_400).unwrap()
}

fn svid_window(ca: &X509Ca, id: &str, nb: i64, na: i64) -> Arc<SvidCertResolver> {
    let (key, csr) = new_svid_key_and_csr().unwrap();
    let chain = ca.sign_svid(&csr, id, &[], nb, na).unwrap();
    Arc::new(SvidCertResolver::new(&chain, &key).unwrap())
}

fn svid(ca: &X509Ca, id: &str) -> Arc<SvidCertResolver> {
    svid_window(ca, id, now() - 60, now() + 3600)
}

fn rotate(resolver: &SvidCertResolver, ca: &X509Ca, id: &str) {
    let (key, csr) = new_svid_key_and_csr().unwrap();
    let chain = ca
        .sign_svid(&csr, id, &[], now() - 60, now() + 3600)
        .unwrap();
    resolver.rotate(&chain, &key).unwrap();
}

fn exact(id: &str) -> SpiffeIdAuthorizer {
    SpiffeIdAuthorizer::exact(id).unwrap()
}

/// Which side of the handshake failed.
#[derive(Debug, PartialEq)]
enum Side {
    Client,
    Server,
}

fn handshake(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), (Side, rustls::Error)> {
    // The name is deliberately unrelated to any certificate: SPIFFE ignores it.
    let name = ServerName::try_from("not-in-any-cert.invalid").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    for _ in 0..16 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets().map_err(|e| (Side::Server, e))?;

        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets().map_err(|e| (Side::Client, e))?;

        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            return Ok((c, s));
        }
    }
    panic!("the handshake did not finish");
}

/// Configs for a server and a client that each trust `ca_roots` of [`TD`].
struct Pair {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    client_auth: Authorities,
    server_auth: Authorities,
}

fn pair(
    roots: Vec<Vec<u8>>,
    server_svid: Arc<SvidCertResolver>,
    client_svid: Arc<SvidCertResolver>,
    server_allows: SpiffeIdAuthorizer,
    client_allows: SpiffeIdAuthorizer,
) -> Pair {
    let server_auth = Authorities::new(TD, roots.clone()).unwrap();
    let client_auth = Authorities::new(TD, roots).unwrap();
    let server = server_config(
        server_svid,
        Arc::new(SpiffeClientVerifier::new(
            server_auth.clone(),
            server_allows,
        )),
    )
    .unwrap();
    let client = client_config(
        client_svid,
        Arc::new(SpiffeServerVerifier::new(
            client_auth.clone(),
            client_allows,
        )),
    )
    .unwrap();
    Pair {
        client: Arc::new(client),
        server: Arc::new(server),
        client_auth,
        server_auth,
    }
}

/// The SPIFFE reason inside a rustls error (rustls prints it with Debug; callers can
/// downcast it like this).
fn reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            inner,
        ))) => inner
            .downcast_ref::<TlsError>()
            .map(ToString::to_string)
            .unwrap_or_else(|| inner.to_string()),
        other => other.to_string(),
    }
}

#[test]
fn mutual_tls_with_the_right_ids() {
    let ca = new_ca(TD);
    let p = pair(
        ca.roots(),
        svid(&ca, SERVER_ID),
        svid(&ca, CLIENT_ID),
        exact(CLIENT_ID),
        exact(SERVER_ID),
    );
    let (c, s) = handshake(&p.client, &p.server).unwrap();
    assert_eq!(
        peer_spiffe_id(s.peer_certificates().unwrap()).unwrap(),
        CLIENT_ID
    );
    assert_eq!(
        peer_spiffe_id(c.peer_certificates().unwrap()).unwrap(),
        SERVER_ID
    );
    assert!(matches!(peer_spiffe_id(&[]), Err(TlsError::NoCertificate)));

    // Trust-domain-wide and set authorizers accept too.
    let p = pair(
        ca.roots(),
        svid(&ca, SERVER_ID),
        svid(&ca, CLIENT_ID),
        SpiffeIdAuthorizer::member_of(TD).unwrap(),
        SpiffeIdAuthorizer::one_of([SERVER_ID, "spiffe://example.org/other"]).unwrap(),
    );
    handshake(&p.client, &p.server).unwrap();
}

#[test]
fn wrong_peer_id_is_refused_on_either_side() {
    let ca = new_ca(TD);
    let p = pair(
        ca.roots(),
        svid(&ca, SERVER_ID),
        svid(&ca, CLIENT_ID),
        exact(CLIENT_ID),
        exact("spiffe://example.org/someone-else"),
    );
    let (side, err) = handshake(&p.client, &p.server).unwrap_err();
    assert_eq!(side, Side::Client);
    assert!(
        reason(&err).contains("`spiffe://example.org/server` is not authorised"),
        "{err}"
    );

    let p = pair(
        ca.roots(),
        svid(&ca, SERVER_ID),
        svid(&ca, "spiffe://example.org/intruder"),
        exact(CLIENT_ID),
        exact(SERVER_ID),
    );
    let (side, err) = handshake(&p.client, &p.server).unwrap_err();
    assert_eq!(side, Side::Server);
    assert!(reason(&err).contains("not authorised"), "{err}");
}

#[test]
fn svid_from_another_ca_is_refused() {
    let ca = new_ca(TD);
    let rogue = new_ca(TD);
    let p = pair(
        ca.roots(),
        svid(&ca, SERVER_ID),
        svid(&rogue, CLIENT_ID),
        exact(CLIENT_ID),
        exact(SERVER_ID),
    );
    let (side, err) = handshake(&p.client, &p.server).unwrap_err();
    assert_eq!(side, Side::Server);
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
}

#[test]
fn expired_svid_is_refused() {
    let ca = new_ca(TD);
    let p = pair(
        ca.roots(),
        svid_window(&ca, SERVER_ID, now() - 7200, now() - 3600),
        svid(&ca, CLIENT_ID),
        exact(CLIENT_ID),
        exact(SERVER_ID),
    );
    let (side, err) = handshake(&p.client, &p.server).unwrap_err();
    assert_eq!(side, Side::Client);
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn an_authority_speaks_only_for_its_trust_domain() {
    let ca = new_ca(TD);
    let other = new_ca("other.org");
    // Even with the other domain's root in the set, its IDs do not authenticate here.
    let mut roots = ca.roots();
    roots.extend(other.roots());
    let p = pair(
        roots,
        svid(&ca, SERVER_ID),
        svid(&other, "spiffe://other.org/client"),
        SpiffeIdAuthorizer::custom(|_| true),
        exact(SERVER_ID),
    );
    let (side, err) = handshake(&p.client, &p.server).unwrap_err();
    assert_eq!(side, Side::Server);
    assert!(
        reason(&err).contains("is not in the trust domain `example.org`"),
        "{err}"
    );
}

#[test]
fn rotation_applies_to_new_handshakes_without_new_configs() {
    let old = new_ca(TD);
    let new = new_ca(TD);
    let server_svid = svid(&old, SERVER_ID);
    let client_svid = svid(&old, CLIENT_ID);
    let p = pair(
        old.roots(),
        server_svid.clone(),
        client_svid.clone(),
        exact(CLIENT_ID),
        exact(SERVER_ID),
    );
    handshake(&p.client, &p.server).unwrap();

    // Overlap: both CAs trusted; the server moves to the new CA first.
    let both = [old.roots(), new.roots()].concat();
    p.server_auth.replace(both.clone()).unwrap();
    p.client_auth.replace(both).unwrap();
    rotate(&server_svid, &new, SERVER_ID);
    handshake(&p.client, &p.server).unwrap();
    rotate(&client_svid, &new, CLIENT_ID);
    let (_, s) = handshake(&p.client, &p.server).unwrap();
    let leaf = &s.peer_certificates().unwrap()[0];
    let info = mayfly_crypto::x509::SvidInfo::parse(leaf).unwrap();
    assert_eq!(info.spiffe_id, CLIENT_ID);

    // The old CA is dropped: new SVIDs still work, an old-CA SVID no longer does.
    p.server_auth.replace(new.roots()).unwrap();
    p.client_auth.replace(new.roots()).unwrap();
    handshake(&p.client, &p.server).unwrap();
    let stale_client = client_config(
        svid(&old, CLIENT_ID),
        Arc::new(SpiffeServerVerifier::new(
            p.client_auth.clone(),
            exact(SERVER_ID),
        )),
    )
    .unwrap();
    let (side, err) = handshake(&Arc::new(stale_client), &p.server).unwrap_err();
    assert_eq!(side, Side::Server);
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );

    // Bad input leaves the current state alone.
    assert!(matches!(
        p.server_auth.replace(vec![]),
        Err(TlsError::NoAuthorities)
    ));
    assert!(p.server_auth.replace(vec![b"junk".to_vec()]).is_err());
    assert!(server_svid.rotate(&[], b"").is_err());
    handshake(&p.client, &p.server).unwrap();
}

#[test]
fn client_auth_mandatory_or_optional() {
    let ca = new_ca(TD);
    let no_cert_client = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
                Authorities::new(TD, ca.roots()).unwrap(),
                exact(SERVER_ID),
            )))
            .with_no_client_auth(),
    );
    let p = pair(
        ca.roots(),
        svid(&ca, SERVER_ID),
        svid(&ca, CLIENT_ID),
        exact(CLIENT_ID),
        exact(SERVER_ID),
    );
    let (side, err) = handshake(&no_cert_client, &p.server).unwrap_err();
    assert_eq!(side, Side::Server);
    assert_eq!(err, rustls::Error::NoCertificatesPresented);

    let optional = Arc::new(
        server_config(
            svid(&ca, SERVER_ID),
            Arc::new(SpiffeClientVerifier::optional(
                Authorities::new(TD, ca.roots()).unwrap(),
                exact(CLIENT_ID),
            )),
        )
        .unwrap(),
    );
    let (_, s) = handshake(&no_cert_client, &optional).unwrap();
    assert!(s.peer_certificates().is_none());
    // A client that does present an SVID is still checked.
    let (_, s) = handshake(&p.client, &optional).unwrap();
    assert_eq!(
        peer_spiffe_id(s.peer_certificates().unwrap()).unwrap(),
        CLIENT_ID
    );
}

#[test]
fn resolver_checks_its_input() {
    let ca = new_ca(TD);
    let (key, csr) = new_svid_key_and_csr().unwrap();
    let (other_key, _) = new_svid_key_and_csr().unwrap();
    let chain = ca
        .sign_svid(&csr, SERVER_ID, &[], now(), now() + 60)
        .unwrap();
    assert!(matches!(
        SvidCertResolver::new(&chain, &other_key),
        Err(TlsError::Key(_))
    ));
    assert!(matches!(
        SvidCertResolver::new(&chain, b"junk"),
        Err(TlsError::Key(_))
    ));
    assert!(matches!(
        SvidCertResolver::new(&[], &key),
        Err(TlsError::NoCertificate)
    ));
    // A CA certificate is not an SVID leaf (its ID has no path).
    assert!(matches!(
        SvidCertResolver::new(&[ca.cert_der().to_vec()], &ca.key_pkcs8()),
        Err(TlsError::NotSvid(_))
    ));
    let r = SvidCertResolver::new(&chain, &key).unwrap();
    assert_eq!(r.spiffe_id(), SERVER_ID);
    let dbg = format!("{r:?}");
    assert!(dbg.contains(SERVER_ID));
    assert!(Authorities::new("Bad TD", ca.roots()).is_err());
}
