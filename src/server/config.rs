//! Settings of a [`ThriftServer`](crate::ThriftServer).

use std::time::Duration;

use crate::clock::LONGEST;
use crate::wire::Limits;
use crate::{Protocol, Transport};

/// Settings of a [`ThriftServer`](crate::ThriftServer).
///
/// Start from [`ServerConfig::default()`] and change what you need with the consuming setters:
///
/// ```
/// use std::time::Duration;
/// use blocking_thrift::{Protocol, ServerConfig, Transport};
///
/// let config = ServerConfig::default()
///     .workers(4)
///     .transport(Transport::Buffered)
///     .protocol(Protocol::Compact)
///     .idle_timeout(Duration::from_secs(300));
/// # let _ = config;
/// ```
///
/// gevent-thrift's server spawned one greenlet per connection and had no limits of its own, so
/// the defaults here are chosen for a thread-per-request server instead; each setter says why.
///
/// A duration longer than a century is taken as a century, which is never in practice:
/// `Duration::MAX` may be given for "no limit" wherever a duration is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub(super) workers: usize,
    pub(super) transport: Transport,
    pub(super) protocol: Protocol,
    pub(super) max_message_size: usize,
    pub(super) max_depth: usize,
    pub(super) idle_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) max_connections: usize,
    pub(super) backlog: u32,
    pub(super) drain_timeout: Duration,
    pub(super) max_waiting_bytes: usize,
    pub(super) max_container_elements: usize,
    pub(super) max_queue_wait: Duration,
}

/// The smallest timeout the server uses; sockets reject a zero timeout.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: 8,
            transport: Transport::Framed,
            protocol: Protocol::Binary,
            max_message_size: crate::wire::DEFAULT_MAX_MESSAGE_SIZE,
            max_depth: crate::wire::DEFAULT_MAX_DEPTH,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            backlog: 1024,
            drain_timeout: Duration::from_secs(30),
            max_waiting_bytes: 256 * 1024 * 1024,
            max_container_elements: crate::wire::decode::DEFAULT_MAX_ELEMENTS,
            max_queue_wait: Duration::from_millis(100),
        }
    }
}

impl ServerConfig {
    /// The most worker threads a server runs: as many as the default
    /// [`max_connections`](Self::max_connections), each of which can hold at most one.
    pub const MAX_WORKERS: usize = 10_000;

    /// The limits a request is decoded within.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_message_size: self.max_message_size,
            max_depth: self.max_depth,
            max_elements: self.max_container_elements,
        }
    }

    /// How many threads run requests.
    ///
    /// Idle connections never hold a worker, so this bounds how many requests run at the same
    /// time, not how many clients can stay connected. Defaults to 8: handlers of a blocking server
    /// usually wait on I/O of their own, so a few more threads than a small machine has cores keep
    /// it busy without much memory. At most two workers per core take ready connections
    /// themselves; the others are reserves, handed work by the poller when those two are not
    /// enough, and at once while handlers hold them: on a saturated machine, more workers
    /// taking than the cores can run are taken off their CPU while they hold a connection.
    /// 0 is treated as 1, and more than [`MAX_WORKERS`](Self::MAX_WORKERS) as that many.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.clamp(1, Self::MAX_WORKERS);
        self
    }

    /// How messages are delimited on each connection.
    ///
    /// Defaults to [`Transport::Framed`]. With [`Transport::Buffered`] the server cannot find the
    /// end of a request it failed to decode, so such a request closes its connection (after an
    /// error reply), where a framed connection stays usable.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// How values are encoded inside each message.
    ///
    /// Defaults to [`Protocol::Binary`] (strict: requests must carry the version header, as every
    /// current Thrift library writes it).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The largest request, in bytes, the server accepts.
    ///
    /// A framed request whose declared length is larger, and a buffered request that grows larger,
    /// closes its connection. A string, binary or container count that claims more than is left of
    /// its request is refused before anything is allocated for it, so what decoding a request
    /// allocates stays in proportion to the bytes it really holds. Defaults to 16 MiB, the limit
    /// of Apache Thrift's other servers. 0 is treated as 1 (which rejects every request).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1);
        self
    }

    /// How deeply structs, lists, sets and maps may nest inside a request.
    ///
    /// A deeper request is answered with a protocol error. Defaults to 64, Apache Thrift's
    /// default. 0 is treated as 1 (the arguments struct itself counts as one level).
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth.max(1);
        self
    }

    /// How long a connection may stay open without sending a request before the server closes it.
    ///
    /// Defaults to 60 seconds, so that clients which vanish without closing their side do not
    /// hold connection slots for ever, while pooled clients that call at least once a minute
    /// keep their connections. Zero is treated as 1 ms.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout.clamp(MIN_TIMEOUT, LONGEST);
        self
    }

    /// How long a client has to send the rest of a request once its first byte has arrived, and
    /// to accept its response.
    ///
    /// A request that does not arrive in time closes its connection. Meanwhile the part received
    /// waits in the poller, not in a worker, so a client that sends half a request and stalls
    /// keeps no other client waiting. A response the client does not take at once waits there
    /// too, its worker moving on; one not taken in time closes the connection. Defaults to 10
    /// seconds. Zero is treated as 1 ms.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout.clamp(MIN_TIMEOUT, LONGEST);
        self
    }

    /// How many client connections may be open at once.
    ///
    /// A connection over the limit is accepted and closed at once, so its client sees the
    /// connection closed instead of waiting. Defaults to 10 000, well under the file-descriptor
    /// limit servers are usually given. 0 is treated as 1.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// How many connections the system queues for the server before it accepts them (the
    /// `listen` backlog), for a listener made by [`ThriftServer::bind`](crate::ThriftServer::bind).
    ///
    /// A connection arriving while the queue is full is not refused: its first packet is dropped
    /// and the client tries again a second later, so a burst of clients bigger than the queue
    /// makes some of them wait that second. Defaults to 1024 (the standard library's listeners
    /// queue 128); the system caps it, on Linux at `net.core.somaxconn`. 0 is treated as 1.
    pub fn backlog(mut self, connections: u32) -> Self {
        self.backlog = connections.max(1);
        self
    }

    /// The longest a request that has arrived may wait for a free worker before the server
    /// sheds it: answers it at once with a `TApplicationException` saying it did not run,
    /// instead of running it for a client that has likely given up. Defaults to 100 ms.
    ///
    /// Under a load the workers cannot keep up with, requests queue; served in arrival order,
    /// each would wait longer than its client's timeout, and the workers would spend all their
    /// time on answers nobody reads. With the bound, the requests that are run are run while
    /// their clients still wait. 100 ms leaves clients with the seed's 250 ms response timeout
    /// time for the call itself; below capacity no request waits nearly that long. A request
    /// whose client closed its connection while it waited (even only its sending side, which
    /// Thrift's clients never do alone) is never run, whatever this says.
    /// `Duration::MAX` never sheds for waiting.
    pub fn max_queue_wait(mut self, wait: Duration) -> Self {
        self.max_queue_wait = wait.min(LONGEST);
        self
    }

    /// How long [`ThriftServer::stop`](crate::ThriftServer::stop) waits for requests that are
    /// already running to finish and deliver their responses, and for clients slow to take
    /// them. (A request still arriving when the server stops is not waited for: its
    /// connection is closed.)
    ///
    /// Worker threads still busy when it expires are not joined: they finish their request on
    /// their own and exit. Defaults to 30 seconds, time for slow handlers and slow readers.
    /// Zero means stop does not wait.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout.min(LONGEST);
        self
    }

    /// The most elements one list, set or map in a request may declare. Defaults to
    /// 16,777,216: at one byte an element, what a 16 MiB request can hold.
    ///
    /// Every count is also bounded by what is left of its request; this limit applies on top,
    /// for services that know their containers are smaller. A request over it gets an error
    /// reply, as for any undecodable request.
    pub fn max_container_elements(mut self, elements: usize) -> Self {
        self.max_container_elements = elements;
        self
    }

    /// The most memory, in bytes, that the buffers of connections waiting in the poller may
    /// hold together: mostly requests that have started to arrive but are not complete yet,
    /// and responses their clients have not taken yet (which wait there, not on a worker).
    ///
    /// A partial request waits without a worker, so without this bound clients that each send
    /// most of a large request and stall could make the server hold `max_connections` times
    /// `max_message_size`. A connection whose partial request would take the total past it is
    /// closed (and logged); idle connections give their buffers back instead. Defaults to
    /// 256 MiB. It may be smaller than `max_message_size`: a request larger than it still gets
    /// through when it arrives while a worker reads it.
    pub fn max_waiting_bytes(mut self, bytes: usize) -> Self {
        self.max_waiting_bytes = bytes;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_values_are_raised_to_the_smallest_valid_one() {
        let config = ServerConfig::default()
            .workers(0)
            .max_message_size(0)
            .max_depth(0)
            .idle_timeout(Duration::ZERO)
            .request_timeout(Duration::ZERO)
            .max_connections(0)
            .backlog(0)
            .drain_timeout(Duration::ZERO);
        assert_eq!(config.workers, 1);
        assert_eq!(config.max_message_size, 1);
        assert_eq!(config.max_depth, 1);
        assert_eq!(config.idle_timeout, MIN_TIMEOUT);
        assert_eq!(config.request_timeout, MIN_TIMEOUT);
        assert_eq!(config.max_connections, 1);
        assert_eq!(config.backlog, 1);
        assert_eq!(config.drain_timeout, Duration::ZERO);
    }

    #[test]
    fn values_past_any_use_are_cut_to_the_largest_one() {
        let config = ServerConfig::default()
            .workers(usize::MAX)
            .idle_timeout(Duration::MAX)
            .request_timeout(Duration::MAX)
            .max_queue_wait(Duration::MAX)
            .drain_timeout(Duration::MAX);
        assert_eq!(config.workers, ServerConfig::MAX_WORKERS);
        assert_eq!(config.idle_timeout, LONGEST);
        assert_eq!(config.request_timeout, LONGEST);
        assert_eq!(config.max_queue_wait, LONGEST);
        assert_eq!(config.drain_timeout, LONGEST);
    }
}
