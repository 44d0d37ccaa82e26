//! Turning an endpoint's `host:port` into addresses, within the connect timeout.
//!
//! The system's resolver cannot be given a timeout, and a hanging one would stall a call past
//! every timeout. So a name is resolved on a thread of its own, which the call waits for no
//! longer than its connect timeout; one endpoint has at most one such thread at a time, which
//! every call that connects meanwhile waits for. The lookups under way belong to the
//! resolver, which the clients made from one configuration share: a multi-endpoint client
//! that drops an idle endpoint and makes it again finds its lookup still under way.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Timeout};

type ResolveFn = dyn Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// How endpoints become addresses: the system's resolver, or one the user gave; and the
/// lookups under way, by endpoint, shared by its clones.
#[derive(Clone, Default)]
pub(crate) struct Resolver {
    custom: Option<Arc<ResolveFn>>,
    running: Arc<Mutex<HashMap<Arc<str>, Arc<Lookup>>>>,
}

impl Resolver {
    pub(crate) fn custom(
        resolve: impl Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Self {
        Resolver {
            custom: Some(Arc::new(resolve)),
            running: Arc::default(),
        }
    }

    fn resolve(&self, endpoint: &str) -> io::Result<Vec<SocketAddr>> {
        match &self.custom {
            Some(resolve) => resolve(endpoint),
            None => Ok(endpoint.to_socket_addrs()?.collect()),
        }
    }

    /// The lookup of `endpoint` under way, or a new one started on its own thread.
    fn lookup(&self, endpoint: &Arc<str>) -> io::Result<Arc<Lookup>> {
        let mut running = self.running.lock();
        if let Some(lookup) = running.get(endpoint) {
            if lookup.found.lock().is_none() {
                return Ok(lookup.clone());
            }
        }
        let lookup = Arc::new(Lookup::default());
        let (name, resolver, result) = (endpoint.clone(), self.clone(), lookup.clone());
        thread::Builder::new()
            .name("blocking-thrift-resolver".to_owned())
            .spawn(move || {
                // A resolver that panics fails this lookup only: the next one asks it again.
                let found = panic::catch_unwind(AssertUnwindSafe(|| resolver.resolve(&name)))
                    .unwrap_or_else(|panic| {
                        let said = crate::error::panic_message(&*panic).unwrap_or("no message");
                        Err(io::Error::other(format!("the resolver panicked: {said}")))
                    })
                    .map_err(|e| (e.kind(), e.to_string()));
                *result.found.lock() = Some(found);
                result.done.notify_all();
                // Done: the next connect starts a lookup of its own.
                let mut running = resolver.running.lock();
                if running.get(&name).is_some_and(|l| Arc::ptr_eq(l, &result)) {
                    running.remove(&name);
                }
            })?;
        running.insert(endpoint.clone(), lookup.clone());
        Ok(lookup)
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.custom.is_some() {
            "Resolver(custom)"
        } else {
            "Resolver(system)"
        })
    }
}

/// What a finished lookup found; an error is kept as its parts, so that every caller waiting
/// for the lookup gets one.
type Found = Result<Vec<SocketAddr>, (io::ErrorKind, String)>;

/// One resolution under way, and what it found once it is done.
#[derive(Default)]
struct Lookup {
    found: Mutex<Option<Found>>,
    done: Condvar,
}

/// The resolutions of one endpoint.
pub(crate) struct Lookups {
    endpoint: Arc<str>,
    resolver: Resolver,
}

impl Lookups {
    pub(crate) fn new(endpoint: Arc<str>, resolver: Resolver) -> Self {
        Lookups { endpoint, resolver }
    }

    /// The endpoint's addresses, found by `deadline`: otherwise the connect timed out.
    pub(crate) fn resolve(&self, deadline: Instant) -> Result<Vec<SocketAddr>, Error> {
        let connect_error = |source| Error::Connect {
            endpoint: self.endpoint.clone(),
            source,
        };
        // An address needs no resolving, and no thread.
        if self.resolver.custom.is_none() {
            if let Ok(addr) = self.endpoint.parse::<SocketAddr>() {
                return Ok(vec![addr]);
            }
        }
        let lookup = self
            .resolver
            .lookup(&self.endpoint)
            .map_err(connect_error)?;
        let mut found = lookup.found.lock();
        while found.is_none() {
            if lookup.done.wait_until(&mut found, deadline).timed_out() && found.is_none() {
                log::debug!(target: "blocking_thrift::client", "{}: resolving took longer than the connect timeout", self.endpoint);
                return Err(Error::Timeout(Timeout::Connect));
            }
        }
        match found.as_ref().expect("checked above") {
            Ok(addrs) if addrs.is_empty() => Err(connect_error(io::Error::new(
                io::ErrorKind::NotFound,
                "address resolved to nothing",
            ))),
            Ok(addrs) => Ok(addrs.clone()),
            Err((kind, message)) => Err(connect_error(io::Error::new(*kind, message.clone()))),
        }
    }
}

impl fmt::Debug for Lookups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookups")
            .field("endpoint", &self.endpoint)
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}
