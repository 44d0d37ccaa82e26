//! Sockets registered with the server's poller.

use std::io;
use std::sync::Arc;

use polling::{AsRawSource, AsSource, Event, Poller};

/// A socket registered with the poller, removed from it before the socket is closed.
pub(super) struct Registered<S: AsSource> {
    poller: Arc<Poller>,
    source: S,
}

impl<S: AsSource> Registered<S>
where
    for<'a> &'a S: AsRawSource,
{
    /// Registers `source` with `poller` for the one event `interest` (polling's oneshot mode).
    #[allow(unsafe_code)]
    pub(super) fn new(poller: Arc<Poller>, source: S, interest: Event) -> io::Result<Self> {
        // SAFETY: `Poller::add` requires the source to be deleted from the poller before it is
        // closed. The source moves into the returned value, which never gives it back by value,
        // and whose `Drop` deletes it from the poller before the field itself is dropped (and the
        // socket closed). If `add` fails nothing was registered.
        unsafe { poller.add(&source, interest)? };
        Ok(Registered { poller, source })
    }
}

impl<S: AsSource> Registered<S> {
    pub(super) fn get(&self) -> &S {
        &self.source
    }

    /// Asks for the next event `interest`; polling disarms a source after each event.
    pub(super) fn rearm(&self, interest: Event) -> io::Result<()> {
        self.poller.modify(&self.source, interest)
    }
}

impl<S: AsSource> Drop for Registered<S> {
    fn drop(&mut self) {
        // Fails only if the source was never registered, which `new` rules out.
        let _ = self.poller.delete(&self.source);
    }
}
