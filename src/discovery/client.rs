//! Clients and servers of a service whose fleet is registered in ZooKeeper.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use log::info;

use super::cache::InstanceCache;
use super::instance::ServiceInstance;
use super::registration::Registration;
use super::session::{ZooKeeper, TARGET};
use super::DiscoveryError;
use crate::wire::{InputProtocol, OutputProtocol};
use crate::{ClientConfig, MultiThriftClient, ThriftServer};

#[cfg_attr(docsrs, doc(cfg(feature = "discovery")))]
impl<C: Send + 'static> MultiThriftClient<C> {
    /// A client of the service that `cache` follows: every call tries the live instances in
    /// a shuffled order, as gevent-thrift's `service_client` did, with every knob of the
    /// multi-endpoint client; an instance that left while a call was under way is not tried
    /// by its retries. Instances that left the fleet are closed once idle, like any endpoint no
    /// call uses.
    ///
    /// Requires the `discovery` feature.
    pub fn discovered<F>(cache: InstanceCache, make: F, config: ClientConfig) -> Self
    where
        F: Fn(InputProtocol, OutputProtocol) -> C + Send + Sync + 'static,
    {
        MultiThriftClient::new(
            move || {
                let seen = cache.instances();
                let mut endpoints: Vec<String> =
                    seen.iter().filter_map(ServiceInstance::endpoint).collect();
                shuffle(&mut endpoints);
                // Each looked up again when its turn comes: a retry may come after an instance
                // left, and after the grace its server had given clients, stopped.
                let cache = cache.clone();
                endpoints.into_iter().filter(move |endpoint| {
                    let now = cache.instances();
                    Arc::ptr_eq(&now, &seen)
                        || now
                            .iter()
                            .any(|i| i.endpoint().as_deref() == Some(endpoint.as_str()))
                })
            },
            make,
            config,
        )
    }
}

/// Shuffles `items` (Fisher-Yates) with a small generator of the calling thread's own.
fn shuffle<T>(items: &mut [T]) {
    thread_local! {
        /// The xorshift generator, as its one word of state.
        static GENERATOR: Cell<u64> = Cell::new({
            let nanos = crate::clock::monotonic_nanos();
            let here = &nanos as *const u64 as u64;
            (nanos ^ here.rotate_left(32)) | 1
        });
    }
    GENERATOR.with(|generator| {
        for i in (1..items.len()).rev() {
            let mut x = generator.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            generator.set(x);
            items.swap(i, (x % (i as u64 + 1)) as usize);
        }
    });
}

/// A running [`ThriftServer`]'s place in its service's fleet: registered while it lives.
///
/// [`leave_and_stop`](Self::leave_and_stop) takes the server out of the fleet in an order that
/// loses no call: its node goes first, then, after `grace` for clients to see that, the server
/// drains and stops.
#[derive(Debug)]
pub struct Announcement {
    registration: Registration,
}

impl Announcement {
    /// Registers `server` as an instance of the service `name`, at `advertise` (the host
    /// clients should connect to) and the server's port. Without `advertise`, the address the
    /// server is bound to, unless that is a wildcard (`0.0.0.0`, `::`), which is no address to
    /// publish.
    ///
    /// # Errors
    ///
    /// Fails if the server listens on a wildcard address and `advertise` is `None`, or as
    /// [`Registration::register`].
    pub fn register(
        zk: &ZooKeeper,
        server: &ThriftServer,
        name: &str,
        advertise: Option<&str>,
    ) -> Result<Self, DiscoveryError> {
        let bound = server.local_addr();
        let host = match advertise {
            Some(host) => host.to_owned(),
            None if bound.ip().is_unspecified() => {
                return Err(DiscoveryError::InvalidName(format!(
                    "the server listens on {bound}, which is no address to publish: say which host to advertise"
                )))
            }
            None => match bound.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => ip.to_string(),
            },
        };
        let instance = ServiceInstance::new(name, &host, bound.port())?;
        Ok(Announcement {
            registration: Registration::register(zk, instance)?,
        })
    }

    /// The registration of the server's instance.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// Leaves the fleet, waits `grace` for clients to notice (their caches see the change
    /// within moments; calls already sent still arrive), then stops the server, which answers
    /// every request it received.
    pub fn leave_and_stop(self, server: &ThriftServer, grace: Duration) {
        let path = self.registration.path().to_owned();
        self.registration.close();
        info!(target: TARGET, "left the fleet ({path}); stopping in {grace:?}");
        std::thread::sleep(grace);
        server.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffling_keeps_every_item_and_varies_the_order() {
        let mut orders = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut items: Vec<u32> = (0..6).collect();
            shuffle(&mut items);
            let mut sorted = items.clone();
            sorted.sort();
            assert_eq!(sorted, (0..6).collect::<Vec<_>>());
            orders.insert(items);
        }
        assert!(orders.len() > 10, "{} orders", orders.len());
    }
}
