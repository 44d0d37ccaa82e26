//! The client's TLS settings: whom to trust, who the client is, which name to check.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// How a client speaks TLS: the certificate authorities its servers' certificates must chain
/// to, optionally its own certificate for mutual TLS, and the name to check the server's
/// certificate against (by default the host of each endpoint; an IP address is checked
/// against the certificate's IP subject-alternative names).
///
/// Given to [`ClientConfig::tls`](crate::ClientConfig::tls). Cloning it is cheap, and every
/// connection made from one `ClientTls` (every pooled connection, every endpoint of a
/// [`MultiThriftClient`](crate::MultiThriftClient)) shares one rustls configuration, so its
/// session cache lets a new connection resume an earlier session.
///
/// ```
/// use blocking_thrift::ClientTls;
///
/// # fn demo(ca_pem: &[u8]) -> std::io::Result<()> {
/// let tls = ClientTls::ca_pem(ca_pem)?.server_name("calculator.internal");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// The roots `config` trusts, when this crate built it: a client certificate rebuilds it.
    roots: Option<Arc<RootCertStore>>,
    server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    /// Trusts the certificate authorities in a PEM file (one or more certificates).
    ///
    /// Fails if the file cannot be read or holds no valid certificate.
    pub fn ca_file(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Self::ca_pem(&pem)
    }

    /// Trusts the certificate authorities in PEM text (one or more certificates).
    ///
    /// Fails if it holds no valid certificate.
    pub fn ca_pem(pem: &[u8]) -> io::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.map_err(pem_error)?).map_err(invalid)?;
        }
        if roots.is_empty() {
            return Err(invalid("no CA certificate in the PEM given"));
        }
        Ok(Self::trusting(roots))
    }

    /// Trusts the operating system's certificate authorities (through `rustls-native-certs`),
    /// as for servers with certificates from a public CA.
    ///
    /// Fails if the system has none that can be read.
    pub fn system_roots() -> io::Result<Self> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            let why = found.errors.first().map(ToString::to_string);
            return Err(invalid(format!(
                "no system CA certificate could be loaded{}",
                why.map_or(String::new(), |why| format!(": {why}"))
            )));
        }
        Ok(Self::trusting(roots))
    }

    /// Uses a rustls configuration built by hand (its own verifier, protocol versions, client
    /// certificate, ...) as it is. Build it with the ring provider
    /// (`rustls::ClientConfig::builder_with_provider`) to keep one crypto library in the build.
    pub fn from_config(config: Arc<ClientConfig>) -> Self {
        ClientTls {
            config,
            roots: None,
            server_name: None,
        }
    }

    /// Presents this certificate chain and private key, PEM files, to servers that ask for
    /// one (mutual TLS).
    ///
    /// Fails if a file cannot be read, holds no certificate or key, or the key does not fit;
    /// or if this `ClientTls` came [`from_config`](Self::from_config) (set it there).
    pub fn client_cert_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> io::Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        self.client_cert_pem(&read(cert.as_ref())?, &read(key.as_ref())?)
    }

    /// Presents this certificate chain and private key, as PEM text, to servers that ask for
    /// one (mutual TLS).
    ///
    /// Fails as [`client_cert_files`](Self::client_cert_files) does.
    pub fn client_cert_pem(mut self, cert: &[u8], key: &[u8]) -> io::Result<Self> {
        let Some(roots) = self.roots.clone() else {
            return Err(invalid(
                "a client certificate goes into the rustls ClientConfig given to from_config",
            ));
        };
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_error)?;
        if chain.is_empty() {
            return Err(invalid("no client certificate in the PEM given"));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(pem_error)?;
        let config = builder(roots)
            .with_client_auth_cert(chain, key)
            .map_err(invalid)?;
        self.config = Arc::new(config);
        Ok(self)
    }

    /// Checks every server's certificate against this name (a DNS name or an IP address)
    /// instead of the host of its endpoint, as when connecting by address to a server whose
    /// certificate names a host.
    ///
    /// Defaults to the endpoint's host.
    ///
    /// # Panics
    ///
    /// If `name` is neither a valid DNS name nor an IP address.
    pub fn server_name(mut self, name: &str) -> Self {
        match ServerName::try_from(name.to_owned()) {
            Ok(name) => self.server_name = Some(name),
            Err(e) => panic!("server_name {name:?} is not a DNS name or an IP address: {e}"),
        }
        self
    }

    /// The name set with [`server_name`](Self::server_name), if any.
    pub fn get_server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }

    /// The rustls configuration every connection is made from.
    pub fn get_config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    fn trusting(roots: RootCertStore) -> Self {
        let roots = Arc::new(roots);
        ClientTls {
            config: Arc::new(builder(roots.clone()).with_no_client_auth()),
            roots: Some(roots),
            server_name: None,
        }
    }
}

impl fmt::Debug for ClientTls {
    /// What was set, not all of rustls' configuration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.as_ref().map(|roots| roots.len()))
            .field(
                "client_cert",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn builder(
    roots: Arc<RootCertStore>,
) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
    ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
}

/// The name `endpoint`'s server certificate is checked against: the one `tls` sets, or the
/// endpoint's host (`host:port`, `[v6]:port`, or a bare host).
pub(crate) fn server_name_of(tls: &ClientTls, endpoint: &str) -> io::Result<ServerName<'static>> {
    if let Some(name) = &tls.server_name {
        return Ok(name.clone());
    }
    let host = match endpoint.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
        None => endpoint.rsplit_once(':').map_or(endpoint, |(host, _)| host),
    };
    ServerName::try_from(host.to_owned()).map_err(|e| {
        invalid(format!(
            "the host of {endpoint} is no name a certificate can be checked against ({e}); \
             set one with ClientTls::server_name"
        ))
    })
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

fn pem_error(e: rustls::pki_types::pem::Error) -> io::Error {
    invalid(format!("PEM: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> ClientTls {
        ClientTls::from_config(Arc::new(
            ClientConfig::builder_with_provider(super::super::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        ))
    }

    #[test]
    fn the_name_is_the_endpoints_host() {
        let name = |endpoint| {
            server_name_of(&tls(), endpoint)
                .unwrap()
                .to_str()
                .into_owned()
        };
        assert_eq!(name("calc.example:9090"), "calc.example");
        assert_eq!(name("127.0.0.1:9090"), "127.0.0.1");
        assert_eq!(name("[::1]:9090"), "::1");
        assert_eq!(name("calc"), "calc");
        assert!(server_name_of(&tls(), "bad name:1").is_err());
        let fixed = tls().server_name("other.example");
        let name = server_name_of(&fixed, "127.0.0.1:1").unwrap();
        assert_eq!(name.to_str(), "other.example");
    }

    #[test]
    #[should_panic(expected = "is not a DNS name")]
    fn an_invalid_server_name_is_refused() {
        let _ = tls().server_name("not a name");
    }

    #[test]
    fn pem_without_certificates_is_refused() {
        assert!(ClientTls::ca_pem(b"nothing here").is_err());
        assert!(tls().client_cert_pem(b"", b"").is_err());
    }
}
