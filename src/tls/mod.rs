//! TLS with rustls on the ring provider: the client's settings ([`ClientTls`]) and driving a
//! session over the crate's own deadline-bound sockets.

use std::sync::Arc;

use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
use rustls::crypto::CryptoProvider;

mod client;
pub(crate) mod socket;

pub(crate) use client::server_name_of;
pub use client::ClientTls;

/// The ring provider, passed explicitly: should another crate in the build enable aws-lc-rs
/// too, rustls could not pick a default and `builder()` would panic.
///
/// X25519 is offered first: ring's own order starts with P-384, whose key exchange costs
/// several times the CPU of X25519's in every full handshake.
///
/// rustls 0.23.48 deprecated ring's provider for lacking post-quantum key exchange; ring is
/// kept for building with nothing but a C compiler.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![X25519, SECP256R1, SECP384R1];
    Arc::new(provider)
}
