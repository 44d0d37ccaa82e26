//! Turning an endpoint's `host:port` into addresses, within the connect timeout.
//!
//! The system's resolver cannot be given a timeout, and a hanging one would stall a call past
//! every timeout. So a name is resolved on a thread of its own, which the call waits for no
//! longer than its connect timeout; one endpoint has at most one such thread at a time, which
//! every call that connects meanwhile waits for.

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

/// How endpoints become addresses: the system's resolver, or one the user gave.
#[derive(Clone, Default)]
pub(crate) struct Resolver(Option<Arc<ResolveFn>>);

impl Resolver {
    pub(crate) fn custom(
        resolve: impl Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Self {
        Resolver(Some(Arc::new(resolve)))
    }

    fn resolve(&self, endpoint: &str) -> io::Result<Vec<SocketAddr>> {
        match &self.0 {
            Some(resolve) => resolve(endpoint),
            None => Ok(endpoint.to_socket_addrs()?.collect()),
        }
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
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
    running: Mutex<Option<Arc<Lookup>>>,
}

impl Lookups {
    pub(crate) fn new(endpoint: Arc<str>, resolver: Resolver) -> Self {
        Lookups {
            endpoint,
            resolver,
            running: Mutex::new(None),
        }
    }

    /// The endpoint's addresses, found by `deadline`: otherwise the connect timed out.
    pub(crate) fn resolve(&self, deadline: Instant) -> Result<Vec<SocketAddr>, Error> {
        let connect_error = |source| Error::Connect {
            endpoint: self.endpoint.clone(),
            source,
        };
        // An address needs no resolving, and no thread.
        if self.resolver.0.is_none() {
            if let Ok(addr) = self.endpoint.parse::<SocketAddr>() {
                return Ok(vec![addr]);
            }
        }
        let lookup = self.lookup().map_err(connect_error)?;
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

    /// The lookup under way, or a new one started on its own thread.
    fn lookup(&self) -> io::Result<Arc<Lookup>> {
        let mut running = self.running.lock();
        if let Some(lookup) = &*running {
            if lookup.found.lock().is_none() {
                return Ok(lookup.clone());
            }
        }
        let lookup = Arc::new(Lookup::default());
        let (endpoint, resolver, result) =
            (self.endpoint.clone(), self.resolver.clone(), lookup.clone());
        thread::Builder::new()
            .name("blocking-thrift-resolver".to_owned())
            .spawn(move || {
                // A resolver that panics fails this lookup only: the next one asks it again.
                let found = panic::catch_unwind(AssertUnwindSafe(|| resolver.resolve(&endpoint)))
                    .unwrap_or_else(|panic| {
                        let said = crate::error::panic_message(&*panic).unwrap_or("no message");
                        Err(io::Error::other(format!("the resolver panicked: {said}")))
                    })
                    .map_err(|e| (e.kind(), e.to_string()));
                *result.found.lock() = Some(found);
                result.done.notify_all();
            })?;
        *running = Some(lookup.clone());
        Ok(lookup)
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
