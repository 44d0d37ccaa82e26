//! What a client may be given as its endpoint.

use std::borrow::Cow;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

/// An endpoint a [`ThriftClient`](crate::ThriftClient) can be built for: `host:port` as a
/// string (`&str`, `String`, ...), or a [`SocketAddr`] (or [`SocketAddrV4`], [`SocketAddrV6`]),
/// such as [`ThriftServer::local_addr`](crate::ThriftServer::local_addr) returns.
///
/// A string behind another pointer is not reached by deref coercion, as a `&str` parameter
/// would reach it: for an `s: Arc<String>`, pass `&*s` or `s.as_str()`, not `&s`.
///
/// ```no_run
/// # fn demo(server: &blocking_thrift::ThriftServer) {
/// use blocking_thrift::{ClientConfig, ThriftClient};
///
/// # let (make, config) = (|_, _| (), ClientConfig::default());
/// let by_name: ThriftClient<()> = ThriftClient::new("localhost:9090", make, config.clone());
/// let by_addr: ThriftClient<()> = ThriftClient::new(server.local_addr(), make, config);
/// # }
/// ```
pub trait IntoEndpoint {
    /// The endpoint as `host:port`.
    fn into_endpoint(self) -> Arc<str>;
}

impl IntoEndpoint for &str {
    fn into_endpoint(self) -> Arc<str> {
        self.into()
    }
}

impl IntoEndpoint for String {
    fn into_endpoint(self) -> Arc<str> {
        self.into()
    }
}

impl IntoEndpoint for Box<str> {
    fn into_endpoint(self) -> Arc<str> {
        self.into()
    }
}

impl IntoEndpoint for Arc<str> {
    fn into_endpoint(self) -> Arc<str> {
        self
    }
}

impl IntoEndpoint for Cow<'_, str> {
    fn into_endpoint(self) -> Arc<str> {
        self.into()
    }
}

impl IntoEndpoint for &mut String {
    fn into_endpoint(self) -> Arc<str> {
        self.as_str().into()
    }
}

impl IntoEndpoint for SocketAddr {
    fn into_endpoint(self) -> Arc<str> {
        self.to_string().into()
    }
}

impl IntoEndpoint for SocketAddrV4 {
    fn into_endpoint(self) -> Arc<str> {
        self.to_string().into()
    }
}

impl IntoEndpoint for SocketAddrV6 {
    fn into_endpoint(self) -> Arc<str> {
        self.to_string().into()
    }
}

/// A reference to any of the above: `&String`, `&SocketAddr`, `&SocketAddrV4`, `&&str`...
impl<T: IntoEndpoint + Clone> IntoEndpoint for &T {
    fn into_endpoint(self) -> Arc<str> {
        self.clone().into_endpoint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_socket_addresses_name_the_same_endpoint() {
        let mut name = String::from("127.0.0.1:9090");
        let addr: SocketAddr = name.parse().unwrap();
        let v4: SocketAddrV4 = name.parse().unwrap();
        for endpoint in [
            "127.0.0.1:9090".into_endpoint(),
            (&name).into_endpoint(),
            name.clone().into_endpoint(),
            addr.into_endpoint(),
            (&addr).into_endpoint(),
            v4.into_endpoint(),
            (&v4).into_endpoint(),
            (&"127.0.0.1:9090").into_endpoint(),
            (&mut name).into_endpoint(),
        ] {
            assert_eq!(&*endpoint, "127.0.0.1:9090");
        }
    }

    #[test]
    fn an_ipv6_address_comes_out_as_one_that_parses_back() {
        let addr: SocketAddr = "[::1]:9090".parse().unwrap();
        let endpoint = addr.into_endpoint();
        assert_eq!(endpoint.parse::<SocketAddr>().unwrap(), addr);
        let v6: SocketAddrV6 = "[fe80::1%2]:9090".parse().unwrap();
        for endpoint in [v6.into_endpoint(), (&v6).into_endpoint()] {
            assert_eq!(endpoint.parse::<SocketAddrV6>().unwrap(), v6);
        }
    }
}
