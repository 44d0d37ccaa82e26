//! Settings of a [`ThriftServer`](crate::ThriftServer).

use std::time::Duration;

use crate::clock::{valid_timeout, LONGEST};
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
/// `Duration::MAX` may be given for "no limit" wherever a duration is. A setter given a value
/// the server cannot run with panics, saying which.
///
/// Each setting has a getter named as its setter with `get_` in front, as
/// [`std::process::Command`] has: the setter's name is taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    workers: usize,
    transport: Transport,
    protocol: Protocol,
    max_message_size: usize,
    max_depth: usize,
    idle_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
    backlog: u32,
    drain_timeout: Duration,
    max_waiting_bytes: usize,
    max_container_elements: usize,
    max_queue_wait: Duration,
}

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
    ///
    /// # Panics
    ///
    /// Panics if `workers` is 0 or more than [`MAX_WORKERS`](Self::MAX_WORKERS).
    pub fn workers(mut self, workers: usize) -> Self {
        assert!(workers > 0, "a server needs at least one worker");
        assert!(
            workers <= Self::MAX_WORKERS,
            "{workers} workers is more than the most a server runs, {}",
            Self::MAX_WORKERS
        );
        self.workers = workers;
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
    /// of Apache Thrift's other servers.
    ///
    /// # Panics
    ///
    /// Panics if `bytes` is 0: no request would fit.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "max_message_size must be at least 1 byte");
        self.max_message_size = bytes;
        self
    }

    /// How deeply structs, lists, sets and maps may nest inside a request.
    ///
    /// A deeper request is answered with a protocol error. Defaults to 64, Apache Thrift's
    /// default.
    ///
    /// # Panics
    ///
    /// Panics if `depth` is 0: the arguments struct itself counts as one level.
    pub fn max_depth(mut self, depth: usize) -> Self {
        assert!(
            depth > 0,
            "max_depth must be at least 1, the arguments struct"
        );
        self.max_depth = depth;
        self
    }

    /// How long a connection may stay open without sending a request before the server closes it.
    ///
    /// Defaults to 60 seconds, so that clients which vanish without closing their side do not
    /// hold connection slots for ever, while pooled clients that call at least once a minute
    /// keep their connections. A timeout under 1 ms, the server's timer resolution, is taken
    /// as 1 ms.
    ///
    /// # Panics
    ///
    /// Panics if `timeout` is zero.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = valid_timeout(timeout, "idle_timeout");
        self
    }

    /// How long a client has to send the rest of a request once its first byte has arrived, and
    /// to accept its response.
    ///
    /// A request that does not arrive in time closes its connection. Meanwhile the part received
    /// waits in the poller, not in a worker, so a client that sends half a request and stalls
    /// keeps no other client waiting. A response the client does not take at once waits there
    /// too, its worker moving on; one not taken in time closes the connection. Defaults to 10
    /// seconds. A timeout under 1 ms, the server's timer resolution, is taken as 1 ms.
    ///
    /// # Panics
    ///
    /// Panics if `timeout` is zero.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = valid_timeout(timeout, "request_timeout");
        self
    }

    /// How many client connections may be open at once.
    ///
    /// A connection over the limit is accepted and closed at once, so its client sees the
    /// connection closed instead of waiting (this crate's client fails the call with
    /// [`Error::Transport`](crate::Error::Transport)). Defaults to 10 000, well under the file-descriptor
    /// limit servers are usually given.
    ///
    /// # Panics
    ///
    /// Panics if `connections` is 0.
    pub fn max_connections(mut self, connections: usize) -> Self {
        assert!(connections > 0, "max_connections must be at least 1");
        self.max_connections = connections;
        self
    }

    /// How many connections the system queues for the server before it accepts them (the
    /// `listen` backlog), for a listener made by [`ThriftServer::bind`](crate::ThriftServer::bind).
    ///
    /// A connection arriving while the queue is full is not refused: its first packet is dropped
    /// and the client tries again a second later, so a burst of clients bigger than the queue
    /// makes some of them wait that second. Defaults to 1024 (the standard library's listeners
    /// queue 128); the system caps it, on Linux at `net.core.somaxconn`.
    ///
    /// # Panics
    ///
    /// Panics if `connections` is 0.
    pub fn backlog(mut self, connections: u32) -> Self {
        assert!(connections > 0, "backlog must be at least 1");
        self.backlog = connections;
        self
    }

    /// The longest a request that has arrived may wait for a free worker before the server
    /// sheds it: answers it with a `TApplicationException` saying it did not run, instead of
    /// running it for a client that has likely given up. Defaults to 100 ms.
    ///
    /// The worker that picks the connection up sheds the request when it finds it waited too
    /// long; nothing sheds it the moment the time passes. While every handler is slow, no
    /// worker gets to it, and its client may hit its own response timeout first.
    ///
    /// Under a load the workers cannot keep up with, requests queue; served in arrival order,
    /// each would wait longer than its client's timeout, and the workers would spend all their
    /// time on answers nobody reads. With the bound, the requests that are run are run while
    /// their clients still wait. 100 ms leaves clients with gevent-thrift's 250 ms response timeout
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
    /// reply, as for any undecodable request. Zero allows only empty containers.
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
    /// through when it arrives while a worker reads it. Zero lets no partial request or
    /// response wait.
    pub fn max_waiting_bytes(mut self, bytes: usize) -> Self {
        self.max_waiting_bytes = bytes;
        self
    }

    /// How many threads run requests; see [`workers`](Self::workers).
    #[inline]
    pub fn get_workers(&self) -> usize {
        self.workers
    }

    /// How messages are delimited; see [`transport`](Self::transport).
    #[inline]
    pub fn get_transport(&self) -> Transport {
        self.transport
    }

    /// How values are encoded; see [`protocol`](Self::protocol).
    #[inline]
    pub fn get_protocol(&self) -> Protocol {
        self.protocol
    }

    /// The largest request; see [`max_message_size`](Self::max_message_size).
    #[inline]
    pub fn get_max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// How deeply a request may nest; see [`max_depth`](Self::max_depth).
    #[inline]
    pub fn get_max_depth(&self) -> usize {
        self.max_depth
    }

    /// How long a connection may idle; see [`idle_timeout`](Self::idle_timeout).
    #[inline]
    pub fn get_idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// How long a request may take to arrive; see [`request_timeout`](Self::request_timeout).
    #[inline]
    pub fn get_request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// How many connections may be open; see [`max_connections`](Self::max_connections).
    #[inline]
    pub fn get_max_connections(&self) -> usize {
        self.max_connections
    }

    /// The `listen` backlog; see [`backlog`](Self::backlog).
    #[inline]
    pub fn get_backlog(&self) -> u32 {
        self.backlog
    }

    /// How long a request may wait for a worker; see [`max_queue_wait`](Self::max_queue_wait).
    #[inline]
    pub fn get_max_queue_wait(&self) -> Duration {
        self.max_queue_wait
    }

    /// How long stopping waits; see [`drain_timeout`](Self::drain_timeout).
    #[inline]
    pub fn get_drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// The most elements a container may declare; see
    /// [`max_container_elements`](Self::max_container_elements).
    #[inline]
    pub fn get_max_container_elements(&self) -> usize {
        self.max_container_elements
    }

    /// What waiting connections may hold; see [`max_waiting_bytes`](Self::max_waiting_bytes).
    #[inline]
    pub fn get_max_waiting_bytes(&self) -> usize {
        self.max_waiting_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MIN_TIMEOUT;

    #[test]
    #[should_panic(expected = "at least one worker")]
    fn zero_workers_are_refused() {
        let _ = ServerConfig::default().workers(0);
    }

    #[test]
    #[should_panic(expected = "more than the most a server runs")]
    fn more_workers_than_the_most_are_refused() {
        let _ = ServerConfig::default().workers(ServerConfig::MAX_WORKERS + 1);
    }

    #[test]
    #[should_panic(expected = "max_message_size must be at least 1 byte")]
    fn a_zero_message_size_is_refused() {
        let _ = ServerConfig::default().max_message_size(0);
    }

    #[test]
    #[should_panic(expected = "max_depth must be at least 1")]
    fn a_zero_depth_is_refused() {
        let _ = ServerConfig::default().max_depth(0);
    }

    #[test]
    #[should_panic(expected = "idle_timeout must be longer than zero")]
    fn a_zero_idle_timeout_is_refused() {
        let _ = ServerConfig::default().idle_timeout(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "request_timeout must be longer than zero")]
    fn a_zero_request_timeout_is_refused() {
        let _ = ServerConfig::default().request_timeout(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "max_connections must be at least 1")]
    fn zero_connections_are_refused() {
        let _ = ServerConfig::default().max_connections(0);
    }

    #[test]
    #[should_panic(expected = "backlog must be at least 1")]
    fn a_zero_backlog_is_refused() {
        let _ = ServerConfig::default().backlog(0);
    }

    #[test]
    fn the_smallest_valid_values_are_kept() {
        let config = ServerConfig::default()
            .workers(1)
            .max_message_size(1)
            .max_depth(1)
            .idle_timeout(Duration::from_millis(1))
            .request_timeout(Duration::from_millis(1))
            .max_connections(1)
            .backlog(1)
            .drain_timeout(Duration::ZERO)
            .max_queue_wait(Duration::ZERO)
            .max_container_elements(0)
            .max_waiting_bytes(0);
        assert_eq!(config.get_workers(), 1);
        assert_eq!(config.get_max_message_size(), 1);
        assert_eq!(config.get_max_depth(), 1);
        assert_eq!(config.get_idle_timeout(), MIN_TIMEOUT);
        assert_eq!(config.get_request_timeout(), MIN_TIMEOUT);
        assert_eq!(config.get_max_connections(), 1);
        assert_eq!(config.get_backlog(), 1);
        assert_eq!(config.get_drain_timeout(), Duration::ZERO);
        assert_eq!(config.get_max_queue_wait(), Duration::ZERO);
        assert_eq!(config.get_max_container_elements(), 0);
        assert_eq!(config.get_max_waiting_bytes(), 0);
    }

    #[test]
    fn timeouts_under_the_timer_resolution_are_taken_as_it() {
        let config = ServerConfig::default()
            .idle_timeout(Duration::from_nanos(1))
            .request_timeout(Duration::from_micros(500));
        assert_eq!(config.get_idle_timeout(), MIN_TIMEOUT);
        assert_eq!(config.get_request_timeout(), MIN_TIMEOUT);
    }

    #[test]
    fn values_past_any_use_are_cut_to_the_largest_one() {
        let config = ServerConfig::default()
            .workers(ServerConfig::MAX_WORKERS)
            .idle_timeout(Duration::MAX)
            .request_timeout(Duration::MAX)
            .max_queue_wait(Duration::MAX)
            .drain_timeout(Duration::MAX);
        assert_eq!(config.get_workers(), ServerConfig::MAX_WORKERS);
        assert_eq!(config.get_idle_timeout(), LONGEST);
        assert_eq!(config.get_request_timeout(), LONGEST);
        assert_eq!(config.get_max_queue_wait(), LONGEST);
        assert_eq!(config.get_drain_timeout(), LONGEST);
    }
}
