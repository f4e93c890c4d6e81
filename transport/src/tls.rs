//! Mutual TLS for the cluster (DESIGN section 8): a cluster CA signs every node's and client's
//! certificate; each certificate names its holder as a DNS name, `n<node_id>.<cluster_id>.flotilla`
//! for nodes and `client.<cluster_id>.flotilla` for clients, so the standard WebPKI name check
//! proves who is at the other end. A dialer checks the name of the node it wanted; an acceptor
//! checks that the peer's certificate names the node its `Hello` claims.
//!
//! `ClusterCa` makes a development CA and certificates with rcgen (what `flotilla certs` writes).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// The ALPN protocol of node and client connections.
pub const ALPN: &[u8] = b"flotilla/1";

/// Why TLS material could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid cluster id {0:?}: use 1-63 lowercase letters, digits and '-'")]
    InvalidClusterId(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("pem: {0}")]
    Pem(String),
}

/// Checks that `cluster_id` can be a DNS label (it is part of certificate names).
///
/// # Errors
/// [`TlsError::InvalidClusterId`].
pub fn check_cluster_id(cluster_id: &str) -> Result<(), TlsError> {
    let ok = !cluster_id.is_empty()
        && cluster_id.len() <= 63
        && !cluster_id.starts_with('-')
        && !cluster_id.ends_with('-')
        && cluster_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TlsError::InvalidClusterId(cluster_id.to_string()))
    }
}

/// The certificate name of node `node_id` of `cluster_id`.
pub fn node_name(cluster_id: &str, node_id: u64) -> String {
    format!("n{node_id}.{cluster_id}.flotilla")
}

/// The certificate name every node of `cluster_id` also has: a client dials any node by it
/// (it knows addresses, not node ids) and is sure to reach a node of its cluster.
pub fn any_node_name(cluster_id: &str) -> String {
    format!("node.{cluster_id}.flotilla")
}

/// The certificate name every client of `cluster_id` has.
pub fn client_name(cluster_id: &str) -> String {
    format!("client.{cluster_id}.flotilla")
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// What an endpoint needs for mutual TLS: the cluster CA to trust and its own identity.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub ca: CertificateDer<'static>,
    pub identity: Identity,
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

impl TlsConfig {
    /// Loads the CA certificate, this endpoint's certificate chain and its private key, all PEM
    /// (what `flotilla cluster up` and `flotilla certs` write).
    ///
    /// # Errors
    /// [`TlsError::Pem`] naming what could not be read.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let ca = CertificateDer::from_pem_slice(ca_pem)
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
        let cert_chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
        if cert_chain.is_empty() {
            return Err(TlsError::Pem(
                "certificate: no certificate in the file".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
        Ok(Self {
            ca,
            identity: Identity { cert_chain, key },
        })
    }

    /// The CA certificate, the certificate chain and the private key, PEM.
    pub fn to_pem(&self) -> (String, String, String) {
        let chain: String = self
            .identity
            .cert_chain
            .iter()
            .map(|c| pem("CERTIFICATE", c.as_ref()))
            .collect();
        (
            pem("CERTIFICATE", self.ca.as_ref()),
            chain,
            pem("PRIVATE KEY", self.identity.key.secret_der()),
        )
    }
}

fn ca_common_name(cluster_id: &str) -> String {
    format!("flotilla cluster {cluster_id} CA")
}

fn ca_params(cluster_id: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("flotilla cluster {cluster_id} CA"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A cluster certificate authority.
pub struct ClusterCa {
    cluster_id: String,
    cert: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for `cluster_id`.
    ///
    /// # Errors
    /// [`TlsError::InvalidClusterId`], [`TlsError::Generate`].
    pub fn generate(cluster_id: &str) -> Result<Self, TlsError> {
        check_cluster_id(cluster_id)?;
        let params = ca_params(cluster_id)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cluster_id: cluster_id.to_string(),
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key in PEM.
    ///
    /// # Errors
    /// [`TlsError::Pem`] or [`TlsError::Generate`] for unreadable PEM.
    pub fn from_pem(cluster_id: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;
        check_cluster_id(cluster_id)?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        // The issuer is rebuilt from the cluster id (see `ca_params`): refuse a certificate that
        // is not this cluster's CA, whose certificates no node would accept.
        let common_name = ca_common_name(cluster_id);
        if !cert
            .as_ref()
            .windows(common_name.len())
            .any(|w| w == common_name.as_bytes())
        {
            return Err(TlsError::Pem(format!(
                "the certificate is not the CA of cluster {cluster_id}"
            )));
        }
        // The CA's parameters are a function of the cluster id (see `ca_params`), so the issuer
        // rebuilt from them and the key names the same subject as the stored certificate.
        let issuer = Issuer::new(ca_params(cluster_id)?, KeyPair::from_pem(key_pem)?);
        Ok(Self {
            cluster_id: cluster_id.to_string(),
            cert,
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The CA certificate (DER), what every endpoint trusts.
    pub fn cert(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    fn issue(&self, names: Vec<String>, common_name: &str) -> Result<Identity, TlsError> {
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// A node's certificate, naming it for mutual TLS; `extra_names` are added (host names a
    /// client may dial).
    ///
    /// # Errors
    /// [`TlsError::Generate`].
    pub fn issue_node(&self, node_id: u64, extra_names: &[String]) -> Result<TlsConfig, TlsError> {
        // Extra names are for clients dialing a host name; they must not name other nodes,
        // clients or wildcards.
        if let Some(bad) = extra_names
            .iter()
            .find(|n| n.contains('*') || n.ends_with(".flotilla"))
        {
            return Err(TlsError::Pem(format!(
                "extra certificate name {bad:?} not allowed"
            )));
        }
        // A node is also a client of the others: its placement runs operators through the
        // client library.
        let mut names = vec![
            node_name(&self.cluster_id, node_id),
            any_node_name(&self.cluster_id),
            client_name(&self.cluster_id),
        ];
        names.extend_from_slice(extra_names);
        Ok(TlsConfig {
            ca: self.cert(),
            identity: self.issue(names, &format!("flotilla node {node_id}"))?,
        })
    }

    /// A client's certificate.
    ///
    /// # Errors
    /// [`TlsError::Generate`].
    pub fn issue_client(&self) -> Result<TlsConfig, TlsError> {
        Ok(TlsConfig {
            ca: self.cert(),
            identity: self.issue(vec![client_name(&self.cluster_id)], "flotilla client")?,
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(tls: &TlsConfig) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.ca.clone())?;
    Ok(Arc::new(roots))
}

/// The QUIC server side: TLS 1.3, client certificates required and verified against the CA.
///
/// # Errors
/// [`TlsError`] for unusable certificates.
pub fn server_config(tls: &TlsConfig) -> Result<quinn::ServerConfig, TlsError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(tls)?, provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            tls.identity.cert_chain.clone(),
            tls.identity.key.clone_key(),
        )?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// The QUIC client side: trusts only the CA, presents our certificate.
///
/// # Errors
/// [`TlsError`] for unusable certificates.
pub fn client_config(tls: &TlsConfig) -> Result<quinn::ClientConfig, TlsError> {
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(tls)?)
        .with_client_auth_cert(
            tls.identity.cert_chain.clone(),
            tls.identity.key.clone_key(),
        )?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// Whether the (CA-verified) certificate the peer of `conn` presented names `name`.
pub fn peer_has_name(conn: &quinn::Connection, name: &str) -> bool {
    let Some(identity) = conn.peer_identity() else {
        return false;
    };
    let Ok(certs) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
        return false;
    };
    let Some(leaf) = certs.first() else {
        return false;
    };
    let Ok(server_name) = ServerName::try_from(name.to_string()) else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .and_then(|cert| cert.verify_is_valid_for_subject_name(&server_name))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_must_be_dns_labels() {
        assert!(check_cluster_id("prod-1").is_ok());
        for bad in ["", "Prod", "a.b", "-x", "x-", &"a".repeat(64)] {
            assert!(check_cluster_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_identity_round_trips_through_pem() {
        let ca = ClusterCa::generate("pem-test").expect("ca");
        let node = ca.issue_node(3, &[]).expect("node");
        let (ca_pem, cert, key) = node.to_pem();
        let back =
            TlsConfig::from_pem(ca_pem.as_bytes(), cert.as_bytes(), key.as_bytes()).expect("parse");
        assert_eq!(back.ca, node.ca);
        assert_eq!(back.identity.cert_chain, node.identity.cert_chain);
        assert_eq!(
            back.identity.key.secret_der(),
            node.identity.key.secret_der()
        );
        assert!(TlsConfig::from_pem(b"junk", cert.as_bytes(), key.as_bytes()).is_err());
        assert!(TlsConfig::from_pem(ca_pem.as_bytes(), b"", key.as_bytes()).is_err());
    }

    #[test]
    fn a_ca_round_trips_through_pem() {
        let ca = ClusterCa::generate("c1").expect("ca");
        let again = ClusterCa::from_pem("c1", &ca.cert_pem(), &ca.key_pem()).expect("from pem");
        let node = again.issue_node(3, &[]).expect("node");
        assert_eq!(node.identity.cert_chain.len(), 1);
        assert!(server_config(&node).is_ok());
        assert!(client_config(&node).is_ok());
    }
}
