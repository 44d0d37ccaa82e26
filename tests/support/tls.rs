//! TLS for the tests: certificates made with rcgen when a test runs, and a thread-per-connection
//! Calculator server over rustls that counts its handshakes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use blocking_thrift::rustls::{self, pki_types::pem::PemObject};
use blocking_thrift::{Protocol, Transport};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use thrift::server::TProcessor;

use super::{calculator, thrift_protocols, thrift_transports, CalculatorService};

/// A certificate authority of the tests' own.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate chain and its key, as PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), valid now.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.issue(names, false)
    }

    /// A certificate for `names` that expired long ago.
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        self.issue(names, true)
    }

    fn issue(&self, names: &[&str], expired: bool) -> Leaf {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        Arc::new(roots)
    }
}

#[allow(deprecated)] // ring has no post-quantum key exchange; fine for tests
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration presenting `leaf`, requiring client certificates from `clients`.
pub fn server_config(leaf: &Leaf, clients: Option<&Ca>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(ca.roots(), provider())
                .build()
                .unwrap(),
        ),
    };
    let chain = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

/// A Calculator server speaking TLS, one thread per connection.
pub struct TlsServer {
    pub addr: SocketAddr,
    /// Handshakes finished in full.
    pub full: Arc<AtomicUsize>,
    /// Handshakes that resumed an earlier session.
    pub resumed: Arc<AtomicUsize>,
    /// Handshakes that failed.
    pub failed: Arc<AtomicUsize>,
    /// The handler every connection shares.
    pub service: Arc<CalculatorService>,
}

impl TlsServer {
    pub fn start(config: Arc<ServerConfig>, transport: Transport, protocol: Protocol) -> TlsServer {
        Self::start_closing_after(config, transport, protocol, usize::MAX)
    }

    /// A server that ends each connection with a `close_notify` after `calls` calls.
    pub fn start_closing_after(
        config: Arc<ServerConfig>,
        transport: Transport,
        protocol: Protocol,
        calls: usize,
    ) -> TlsServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let full = Arc::new(AtomicUsize::new(0));
        let resumed = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let counters = (full.clone(), resumed.clone(), failed.clone());
        let service = Arc::new(CalculatorService::new("tls"));
        let shared = service.clone();
        // Detached: it ends with the test's process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                stream.set_nodelay(true).unwrap();
                let (config, service) = (config.clone(), service.clone());
                let (full, resumed, failed) = counters.clone();
                std::thread::spawn(move || {
                    let mut session = ServerConnection::new(config).unwrap();
                    let mut stream = stream;
                    while session.is_handshaking() {
                        if session.complete_io(&mut stream).is_err() {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    match session.handshake_kind() {
                        Some(HandshakeKind::Resumed) => resumed.fetch_add(1, Ordering::SeqCst),
                        _ => full.fetch_add(1, Ordering::SeqCst),
                    };
                    let stream = StreamOwned::new(session, stream);
                    serve(stream, transport, protocol, service, calls);
                });
            }
        });
        TlsServer {
            addr,
            full,
            resumed,
            failed,
            service: shared,
        }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

/// A TLS stream shared by the thrift crate's read and write transports.
#[derive(Clone)]
struct Shared(Arc<Mutex<StreamOwned<ServerConnection, TcpStream>>>);

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.lock().unwrap().read(buf)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap().flush()
    }
}

fn serve(
    stream: StreamOwned<ServerConnection, TcpStream>,
    transport: Transport,
    protocol: Protocol,
    service: Arc<CalculatorService>,
    calls: usize,
) {
    let shared = Shared(Arc::new(Mutex::new(stream)));
    let (input, output) = thrift_transports(transport, shared.clone(), shared.clone());
    let (mut i_prot, mut o_prot) = thrift_protocols(protocol, input, output);
    let processor = calculator::CalculatorSyncProcessor::new(service);
    for _ in 0..calls {
        if processor.process(&mut *i_prot, &mut *o_prot).is_err() {
            return;
        }
    }
    let mut stream = shared.0.lock().unwrap();
    stream.conn.send_close_notify();
    let _ = stream.flush();
    // Held open: the client must see the close_notify itself, not a closed socket.
    std::thread::sleep(std::time::Duration::from_secs(5));
}
