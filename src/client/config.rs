//! Client configuration.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TSerializable,
};

use super::resolve::Resolver;
use crate::clock::{valid_timeout, Clock, LONGEST};
use crate::tls::ClientTls;
use crate::wire::{Limits, Protocol, Transport, DEFAULT_MAX_DEPTH, DEFAULT_MAX_MESSAGE_SIZE};

/// Recognises one of a user's exception types, as a value or as encoded bytes.
#[derive(Clone, Copy)]
pub(crate) struct ErrorMatcher {
    name: &'static str,
    /// Whether a boxed error is of the type.
    is: fn(&(dyn StdError + Send + Sync + 'static)) -> bool,
    /// Whether an exception struct, in the protocol given, is of the type: it must decode as
    /// the type and encode back to the very same bytes.
    decodes: fn(Protocol, &[u8]) -> bool,
    /// The `Debug` text of such an exception struct, if it is of the type.
    describes: fn(Protocol, &[u8]) -> Option<String>,
}

/// An exception struct, in `protocol`, as a `T`, if it decodes as one and encodes back to the
/// very same bytes.
fn decode_exactly<T: TSerializable>(protocol: Protocol, bytes: &[u8]) -> Option<T> {
    let mut again = Vec::with_capacity(bytes.len());
    let value = match protocol {
        Protocol::Binary => {
            let value = T::read_from_in_protocol(&mut TBinaryInputProtocol::new(bytes, true));
            let value = value.ok()?;
            let mut output = TBinaryOutputProtocol::new(&mut again, true);
            value.write_to_out_protocol(&mut output).ok()?;
            value
        }
        Protocol::Compact => {
            let value = T::read_from_in_protocol(&mut TCompactInputProtocol::new(bytes)).ok()?;
            value
                .write_to_out_protocol(&mut TCompactOutputProtocol::new(&mut again))
                .ok()?;
            value
        }
    };
    (again == bytes).then_some(value)
}

impl ErrorMatcher {
    fn of<T: StdError + TSerializable + 'static>() -> Self {
        ErrorMatcher {
            name: std::any::type_name::<T>(),
            is: |err| err.is::<T>(),
            decodes: |protocol, bytes| decode_exactly::<T>(protocol, bytes).is_some(),
            describes: |protocol, bytes| {
                decode_exactly::<T>(protocol, bytes).map(|value| format!("{value:?}"))
            },
        }
    }
}

/// How a client connects, waits and gives up; shared by [`ThriftClient`](crate::ThriftClient)
/// and [`MultiThriftClient`](crate::MultiThriftClient).
///
/// Defaults are gevent-thrift's: tuned for a service whose 95th percentile
/// response time is 200 ms. Its names are kept (`read_timeout`, `maxfail`,
/// `time_unit`, `reset_timeout`; its `psize` is [`pool_size`](Self::pool_size)).
///
/// One configuration serves both clients, as gevent-thrift's keyword arguments did, so a
/// client that grows from one endpoint to several keeps its settings. Each endpoint of a
/// multi-endpoint client gets its own pool and breaker with the per-endpoint settings; a few
/// settings are read only by [`MultiThriftClient`](crate::MultiThriftClient), and a
/// single-endpoint client ignores them: [`retries`](Self::retries),
/// [`retry_on`](Self::retry_on), [`retry_unsent_only`](Self::retry_unsent_only),
/// [`deadline`](Self::deadline) and [`idle_timeout`](Self::idle_timeout).
///
/// A duration longer than a century is taken as a century, which is never in practice:
/// `Duration::MAX` may be given for "no limit" wherever a duration is.
///
/// ```
/// use std::time::Duration;
/// use blocking_thrift::{ClientConfig, Protocol};
///
/// let config = ClientConfig::default()
///     .read_timeout(Duration::from_secs(1))
///     .pool_size(4)
///     .protocol(Protocol::Compact);
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    connect_timeout: Duration,
    read_timeout: Duration,
    pool_timeout: Duration,
    pool_size: u32,
    reuse_unchecked: Duration,
    maxfail: u32,
    time_unit: Duration,
    reset_timeout: Duration,
    backoff: Option<(f64, Duration)>,
    jitter: f64,
    transport: Transport,
    protocol: Protocol,
    max_message_size: usize,
    max_container_elements: usize,
    clock: Clock,
    resolver: Resolver,
    failures: Vec<ErrorMatcher>,
    retryable: Vec<ErrorMatcher>,
    retries: u32,
    idle_timeout: Duration,
    deadline: Option<Duration>,
    retry_unsent_only: bool,
    retry_budget: (f64, u32),
    tls: Option<ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_millis(100),
            read_timeout: Duration::from_millis(250),
            pool_timeout: Duration::from_millis(100),
            pool_size: 10,
            reuse_unchecked: Duration::from_millis(1),
            maxfail: 3,
            time_unit: Duration::from_secs(60),
            reset_timeout: Duration::from_secs(10),
            backoff: None,
            jitter: 0.0,
            transport: Transport::Framed,
            protocol: Protocol::Binary,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_container_elements: crate::wire::decode::DEFAULT_MAX_ELEMENTS,
            clock: Clock::system(),
            resolver: Resolver::default(),
            failures: Vec::new(),
            retryable: Vec::new(),
            retries: 1,
            idle_timeout: Duration::from_secs(60),
            deadline: None,
            retry_unsent_only: false,
            retry_budget: (0.2, 10),
            tls: None,
        }
    }
}

impl ClientConfig {
    /// How long connecting may take: resolving the endpoint's name and the endpoint accepting
    /// the connection, and with [`tls`](Self::tls), the TLS handshake. Defaults to 100 ms.
    ///
    /// Every address the endpoint resolves to is tried in turn, each within what is left of
    /// this time. A timeout under 1 ms is taken as 1 ms, as the server's timeouts are.
    ///
    /// # Panics
    ///
    /// Panics if `timeout` is zero.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = valid_timeout(timeout, "connect_timeout");
        self
    }

    /// How long the server has, from the moment the request starts going out, to deliver the
    /// whole response. Defaults to 250 ms.
    ///
    /// It bounds the call as a whole: a server that trickles its answer a byte at a time
    /// cannot stretch it. For [`ThriftClient::call`](crate::ThriftClient::call) it covers
    /// everything the closure sends and reads. A timeout under 1 ms is taken as 1 ms, as the
    /// server's timeouts are.
    ///
    /// # Panics
    ///
    /// Panics if `timeout` is zero.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = valid_timeout(timeout, "read_timeout");
        self
    }

    /// How long a call waits for a pooled connection when all are busy. Defaults to 100 ms.
    ///
    /// Zero means do not wait: fail at once when no connection is free. A call that waits in
    /// vain fails with [`Timeout::PoolWait`](crate::Timeout::PoolWait), which the breaker does
    /// not count: the connections are busy with this client's own calls, whose outcomes tell
    /// the breaker how the endpoint is doing.
    pub fn pool_timeout(mut self, timeout: Duration) -> Self {
        self.pool_timeout = timeout.min(LONGEST);
        self
    }

    /// The most connections kept open to one endpoint (gevent-thrift's `psize`). Defaults to
    /// 10.
    ///
    /// # Panics
    ///
    /// Panics if `size` is zero.
    #[doc(alias = "psize")]
    pub fn pool_size(mut self, size: u32) -> Self {
        assert!(size > 0, "pool_size must be positive");
        self.pool_size = size;
        self
    }

    /// How long after its last answer a pooled connection is reused without first checking
    /// (with one non-blocking `recv`) that the server has not closed it meanwhile. Defaults to
    /// 1 ms, so back-to-back calls skip the check while a connection that sat idle longer is
    /// always checked, and replaced without failing the call if the server closed it.
    ///
    /// A server that closes a connection within this window of answering on it (it stops or
    /// restarts) can make the next call on it fail with a transport error instead. Zero checks
    /// before every reuse.
    pub fn reuse_unchecked_within(mut self, window: Duration) -> Self {
        self.reuse_unchecked = window.min(LONGEST);
        self
    }

    /// How many failures within [`time_unit`](Self::time_unit) the breaker tolerates: one
    /// more opens it. Defaults to 3.
    pub fn maxfail(mut self, maxfail: u32) -> Self {
        self.maxfail = maxfail;
        self
    }

    /// The window in which failures are counted. Defaults to 60 s.
    ///
    /// Zero counts each failure alone, so only a [`maxfail`](Self::maxfail) of 0 opens the
    /// breaker.
    pub fn time_unit(mut self, window: Duration) -> Self {
        self.time_unit = window.min(LONGEST);
        self
    }

    /// How long an open breaker rejects calls before letting one probe through.
    /// Defaults to 10 s. Zero lets the next call through as the probe.
    pub fn reset_timeout(mut self, timeout: Duration) -> Self {
        self.reset_timeout = timeout.min(LONGEST);
        self
    }

    /// Grows the open period by `factor` each time a probe fails, up to `cap`; a successful
    /// probe resets it. Defaults to no back-off (every open period is `reset_timeout`). A
    /// `cap` no longer than `reset_timeout`, zero included, keeps the period from growing.
    ///
    /// # Panics
    ///
    /// Panics if `factor` is below 1 (or NaN).
    pub fn reset_backoff(mut self, factor: f64, cap: Duration) -> Self {
        assert!(
            factor >= 1.0,
            "reset_backoff factor must be at least 1, got {factor}"
        );
        self.backoff = Some((factor, cap.min(LONGEST)));
        self
    }

    /// Spreads each open period randomly by up to `fraction` of itself either way, so that
    /// many clients do not probe a recovering server in step. Defaults to 0 (no jitter).
    ///
    /// # Panics
    ///
    /// Panics if `fraction` is not within `0.0..=1.0`.
    pub fn reset_jitter(mut self, fraction: f64) -> Self {
        assert!(
            (0.0..=1.0).contains(&fraction),
            "reset_jitter must be between 0 and 1, got {fraction}"
        );
        self.jitter = fraction;
        self
    }

    /// Message framing; must match the server's. Defaults to [`Transport::Framed`].
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Message encoding; must match the server's. Defaults to [`Protocol::Binary`].
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The largest request or response, in bytes, a frame included. Defaults to 16 MiB,
    /// Thrift's `TConfiguration` default.
    ///
    /// A larger request fails before anything is sent; a larger response fails the call and
    /// closes its connection.
    ///
    /// # Panics
    ///
    /// Panics if `bytes` is under 1 KiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        assert!(
            bytes >= 1024,
            "max_message_size must be at least 1024 bytes, got {bytes}"
        );
        self.max_message_size = bytes;
        self
    }

    /// The most elements one list, set or map in a response may declare. Defaults to
    /// 16,777,216: at one byte an element, what a 16 MiB response can hold.
    ///
    /// Every count is also bounded by what is left of its response and trusted only once the
    /// bytes its elements need have arrived; this limit applies on top, for services that know
    /// their containers are smaller. A response over it fails with `Error::Protocol`.
    pub fn max_container_elements(mut self, elements: usize) -> Self {
        self.max_container_elements = elements;
        self
    }

    /// The clock the breaker (and endpoint reaping) reads. Defaults to [`Clock::system`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How an endpoint's `host:port` becomes the addresses to connect to. Defaults to the
    /// system's resolver (the standard library's `ToSocketAddrs`).
    ///
    /// Resolving is part of connecting, and bounded by
    /// [`connect_timeout`](Self::connect_timeout) like the rest: a resolver that takes longer
    /// fails the call with [`Timeout::Connect`](crate::Timeout::Connect). Endpoints are
    /// resolved on a thread of their own, at most one per endpoint at a time, which a hanging
    /// resolver keeps until it returns; calls that connect meanwhile wait for it instead of
    /// starting another. The resolver given here is asked for every endpoint, address or
    /// name; only the system's takes an address (`127.0.0.1:9090`) as it is, with no thread.
    /// Addresses are resolved again for every new connection, so a name that moves is
    /// followed.
    pub fn resolve_with(
        mut self,
        resolve: impl Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Self {
        self.resolver = Resolver::custom(resolve);
        self
    }

    /// Counts the service exception `T` as a breaker failure (gevent-thrift's
    /// `handle_errors`). Defaults to none: a service exception means the server is healthy.
    ///
    /// Direct calls recognise `T` by its encoded form; see [`retry_on`](Self::retry_on).
    #[doc(alias = "handle_errors")]
    pub fn failure_on<T: StdError + TSerializable + 'static>(mut self) -> Self {
        self.failures.push(ErrorMatcher::of::<T>());
        self
    }

    /// Lets a multi-endpoint call move on to the next endpoint when the service raises `T`
    /// (gevent-thrift's `handle_retryable_errors`). Has no effect on a single-endpoint client.
    /// Defaults to none.
    ///
    /// Through [`MultiThriftClient::call`](crate::MultiThriftClient::call) the exception is
    /// recognised by its Rust type, exactly. Through a direct handle
    /// ([`MultiDirect`](crate::MultiDirect)) it is recognised by its encoded form, before the
    /// generated code decodes it: an exception that decodes as `T` and encodes back to the
    /// very same bytes. Two exception types with the same fields (or two whose fields are all
    /// unset) cannot be told apart that way, so a direct call may retry an exception of
    /// another type that looks like `T`. For calls that must not run twice, declare only
    /// exceptions no other exception of the service looks like, or call through `call`.
    /// [`failure_on`](Self::failure_on) recognises exceptions the same two ways.
    #[doc(alias = "handle_retryable_errors")]
    pub fn retry_on<T: StdError + TSerializable + 'static>(mut self) -> Self {
        self.retryable.push(ErrorMatcher::of::<T>());
        self
    }

    /// How many other endpoints a multi-endpoint call tries after the first fails.
    /// Defaults to 1.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// How long a multi-endpoint client keeps an endpoint it has not used. Defaults to 60 s.
    ///
    /// The client's reaper thread closes such an endpoint at most an eighth of this (and at
    /// most a second) after its time, whether or not calls are made. Zero closes an endpoint
    /// as soon as the reaper, looking every millisecond, finds no call using it.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout.min(LONGEST);
        self
    }

    /// A bound on a whole multi-endpoint call, every attempt together. Defaults to none.
    /// `Some(Duration::ZERO)` fails every call before it tries an endpoint.
    ///
    /// Each attempt's pool wait, connect and response are cut to what is left; see
    /// [`MultiThriftClient`](crate::MultiThriftClient#deadline) for how a call it stops fails.
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline.map(|d| d.min(LONGEST));
        self
    }

    /// How many retries a multi-endpoint client may make (Finagle's retry budget): over the
    /// last ten seconds of [`clock`](Self::clock), at most `share` of its calls plus
    /// `per_second` a second. Defaults to 20 % plus 10 a second.
    ///
    /// While an endpoint is down, every call that meets it would otherwise cost the others a
    /// second request, and an outage of several would multiply the load on the rest. A call
    /// whose retry the budget refuses fails with the error of its last attempt, and is counted
    /// in [`MultiStats::retries_refused`](crate::MultiStats::retries_refused). A share of
    /// `f64::INFINITY` lifts the budget.
    ///
    /// # Panics
    ///
    /// Panics if `share` is negative (or NaN).
    pub fn retry_budget(mut self, share: f64, per_second: u32) -> Self {
        assert!(
            share >= 0.0,
            "retry_budget share must not be negative, got {share}"
        );
        self.retry_budget = (share, per_second);
        self
    }

    /// Retries only failures where the request certainly did not run (connect failure, open
    /// breaker, pool wait, a request the server shed), for calls that must not run twice.
    /// Defaults to `false`.
    ///
    /// Service exceptions declared with [`retry_on`](Self::retry_on) are still retried: the
    /// service raising one says it did not do the work.
    pub fn retry_unsent_only(mut self, unsent_only: bool) -> Self {
        self.retry_unsent_only = unsent_only;
        self
    }

    /// Speaks TLS to every endpoint: each new connection verifies the server's certificate
    /// and finishes its handshake within [`connect_timeout`](Self::connect_timeout), and a
    /// pooled connection keeps its session, so a call on it pays no handshake. Defaults to
    /// none: plaintext.
    ///
    /// The server's certificate must chain to a CA the [`ClientTls`] trusts and name the
    /// endpoint's host (or the name set with [`ClientTls::server_name`]); an endpoint given
    /// by IP address is checked against the certificate's IP subject-alternative names. A
    /// handshake that fails is [`Error::Handshake`](crate::Error::Handshake), which the
    /// breaker counts as a failed connect.
    ///
    /// ```no_run
    /// use blocking_thrift::{ClientConfig, ClientTls};
    ///
    /// # fn demo() -> std::io::Result<()> {
    /// let tls = ClientTls::ca_file("ca.pem")?
    ///     // Mutual TLS: the certificate this client presents.
    ///     .client_cert_files("client.pem", "client.key")?;
    /// let config = ClientConfig::default().tls(tls);
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The [`connect_timeout`](Self::connect_timeout).
    #[inline]
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The [`read_timeout`](Self::read_timeout).
    #[inline]
    pub fn get_read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The [`pool_timeout`](Self::pool_timeout).
    #[inline]
    pub fn get_pool_timeout(&self) -> Duration {
        self.pool_timeout
    }

    /// The [`pool_size`](Self::pool_size).
    #[inline]
    pub fn get_pool_size(&self) -> u32 {
        self.pool_size
    }

    /// The window of [`reuse_unchecked_within`](Self::reuse_unchecked_within).
    #[inline]
    pub fn get_reuse_unchecked_within(&self) -> Duration {
        self.reuse_unchecked
    }

    /// The [`maxfail`](Self::maxfail).
    #[inline]
    pub fn get_maxfail(&self) -> u32 {
        self.maxfail
    }

    /// The [`time_unit`](Self::time_unit).
    #[inline]
    pub fn get_time_unit(&self) -> Duration {
        self.time_unit
    }

    /// The [`reset_timeout`](Self::reset_timeout).
    #[inline]
    pub fn get_reset_timeout(&self) -> Duration {
        self.reset_timeout
    }

    /// The factor and cap of [`reset_backoff`](Self::reset_backoff), if there is a back-off.
    #[inline]
    pub fn get_reset_backoff(&self) -> Option<(f64, Duration)> {
        self.backoff
    }

    /// The [`reset_jitter`](Self::reset_jitter).
    #[inline]
    pub fn get_reset_jitter(&self) -> f64 {
        self.jitter
    }

    /// The [`transport`](Self::transport).
    #[inline]
    pub fn get_transport(&self) -> Transport {
        self.transport
    }

    /// The [`protocol`](Self::protocol).
    #[inline]
    pub fn get_protocol(&self) -> Protocol {
        self.protocol
    }

    /// The [`max_message_size`](Self::max_message_size).
    #[inline]
    pub fn get_max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The [`max_container_elements`](Self::max_container_elements).
    #[inline]
    pub fn get_max_container_elements(&self) -> usize {
        self.max_container_elements
    }

    /// The [`clock`](Self::clock).
    #[inline]
    pub fn get_clock(&self) -> &Clock {
        &self.clock
    }

    /// The [`retries`](Self::retries).
    #[inline]
    pub fn get_retries(&self) -> u32 {
        self.retries
    }

    /// The [`idle_timeout`](Self::idle_timeout).
    #[inline]
    pub fn get_idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The [`deadline`](Self::deadline).
    #[inline]
    pub fn get_deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// The share and the allowance a second of [`retry_budget`](Self::retry_budget).
    #[inline]
    pub fn get_retry_budget(&self) -> (f64, u32) {
        self.retry_budget
    }

    /// The [`retry_unsent_only`](Self::retry_unsent_only).
    #[inline]
    pub fn get_retry_unsent_only(&self) -> bool {
        self.retry_unsent_only
    }

    /// The [`tls`](Self::tls) settings, if connections speak TLS.
    #[inline]
    pub fn get_tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    /// How endpoint names are resolved.
    #[inline]
    pub(crate) fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Whether any exception type was declared with [`failure_on`](Self::failure_on).
    #[inline]
    pub(crate) fn declares_failures(&self) -> bool {
        !self.failures.is_empty()
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_message_size: self.max_message_size,
            max_depth: DEFAULT_MAX_DEPTH,
            max_elements: self.max_container_elements,
        }
    }

    pub(crate) fn is_declared_failure(&self, err: &(dyn StdError + Send + Sync + 'static)) -> bool {
        self.failures.iter().any(|m| (m.is)(err))
    }

    pub(crate) fn is_declared_retryable(
        &self,
        err: &(dyn StdError + Send + Sync + 'static),
    ) -> bool {
        self.retryable.iter().any(|m| (m.is)(err))
    }

    /// Whether an exception struct, encoded in the configured protocol, is of a type
    /// declared with [`failure_on`](Self::failure_on).
    pub(crate) fn encodes_declared_failure(&self, exception: &[u8]) -> bool {
        self.failures
            .iter()
            .any(|m| (m.decodes)(self.protocol, exception))
    }

    /// The `Debug` text of an exception struct, encoded in the configured protocol, if it
    /// is of a type declared with [`retry_on`](Self::retry_on); `None` for any other.
    pub(crate) fn describe_declared_retryable(&self, exception: &[u8]) -> Option<String> {
        self.retryable
            .iter()
            .find_map(|m| (m.describes)(self.protocol, exception))
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names =
            |list: &[ErrorMatcher]| -> Vec<&'static str> { list.iter().map(|m| m.name).collect() };
        f.debug_struct("ClientConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("pool_timeout", &self.pool_timeout)
            .field("pool_size", &self.pool_size)
            .field("reuse_unchecked_within", &self.reuse_unchecked)
            .field("maxfail", &self.maxfail)
            .field("time_unit", &self.time_unit)
            .field("reset_timeout", &self.reset_timeout)
            .field("reset_backoff", &self.backoff)
            .field("reset_jitter", &self.jitter)
            .field("transport", &self.transport)
            .field("protocol", &self.protocol)
            .field("max_message_size", &self.max_message_size)
            .field("max_container_elements", &self.max_container_elements)
            .field("clock", &self.clock)
            .field("resolver", &self.resolver)
            .field("failures", &names(&self.failures))
            .field("retryable", &names(&self.retryable))
            .field("retries", &self.retries)
            .field("idle_timeout", &self.idle_timeout)
            .field("deadline", &self.deadline)
            .field("retry_unsent_only", &self.retry_unsent_only)
            .field("retry_budget", &self.retry_budget)
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MIN_TIMEOUT;
    use thrift::protocol::{
        TFieldIdentifier, TInputProtocol, TOutputProtocol, TStructIdentifier, TType,
    };

    #[test]
    fn defaults_are_the_originals() {
        let c = ClientConfig::default();
        assert_eq!(c.connect_timeout, Duration::from_millis(100));
        assert_eq!(c.read_timeout, Duration::from_millis(250));
        assert_eq!(c.pool_timeout, Duration::from_millis(100));
        assert_eq!(c.pool_size, 10);
        assert_eq!(c.maxfail, 3);
        assert_eq!(c.time_unit, Duration::from_secs(60));
        assert_eq!(c.reset_timeout, Duration::from_secs(10));
        assert_eq!(c.retries, 1);
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.transport, Transport::Framed);
        assert_eq!(c.protocol, Protocol::Binary);
    }

    #[test]
    fn the_smallest_valid_values_are_kept() {
        let c = ClientConfig::default()
            .pool_size(1)
            .connect_timeout(Duration::from_millis(1))
            .read_timeout(Duration::from_millis(1))
            .reset_jitter(1.0)
            .reset_backoff(1.0, Duration::from_secs(1))
            .max_message_size(1024)
            .retry_budget(0.0, 0);
        assert_eq!(c.get_pool_size(), 1);
        assert_eq!(c.get_connect_timeout(), Duration::from_millis(1));
        assert_eq!(c.get_read_timeout(), Duration::from_millis(1));
        assert_eq!(c.get_reset_jitter(), 1.0);
        assert_eq!(c.get_reset_backoff(), Some((1.0, Duration::from_secs(1))));
        assert_eq!(c.get_max_message_size(), 1024);
        assert_eq!(c.get_retry_budget(), (0.0, 0));
        assert_eq!(
            ClientConfig::default().reset_jitter(0.0).get_reset_jitter(),
            0.0
        );
    }

    #[test]
    fn durations_past_a_century_are_a_century() {
        let c = ClientConfig::default()
            .connect_timeout(Duration::MAX)
            .read_timeout(Duration::MAX)
            .pool_timeout(Duration::MAX)
            .deadline(Some(Duration::MAX));
        assert_eq!(c.get_connect_timeout(), LONGEST);
        assert_eq!(c.get_read_timeout(), LONGEST);
        assert_eq!(c.get_pool_timeout(), LONGEST);
        assert_eq!(c.get_deadline(), Some(LONGEST));
    }

    #[test]
    #[should_panic(expected = "pool_size must be positive")]
    fn a_zero_pool_size_is_refused() {
        let _ = ClientConfig::default().pool_size(0);
    }

    #[test]
    #[should_panic(expected = "connect_timeout must be longer than zero")]
    fn a_zero_connect_timeout_is_refused() {
        let _ = ClientConfig::default().connect_timeout(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "read_timeout must be longer than zero")]
    fn a_zero_read_timeout_is_refused() {
        let _ = ClientConfig::default().read_timeout(Duration::ZERO);
    }

    #[test]
    fn timeouts_under_a_millisecond_are_taken_as_one() {
        let c = ClientConfig::default()
            .connect_timeout(Duration::from_nanos(1))
            .read_timeout(Duration::from_micros(999));
        assert_eq!(c.get_connect_timeout(), MIN_TIMEOUT);
        assert_eq!(c.get_read_timeout(), MIN_TIMEOUT);
    }

    #[test]
    fn zero_is_a_valid_duration_for_the_other_settings() {
        let c = ClientConfig::default()
            .pool_timeout(Duration::ZERO)
            .reuse_unchecked_within(Duration::ZERO)
            .time_unit(Duration::ZERO)
            .reset_timeout(Duration::ZERO)
            .reset_backoff(2.0, Duration::ZERO)
            .idle_timeout(Duration::ZERO)
            .deadline(Some(Duration::ZERO));
        assert_eq!(c.get_pool_timeout(), Duration::ZERO);
        assert_eq!(c.get_reuse_unchecked_within(), Duration::ZERO);
        assert_eq!(c.get_time_unit(), Duration::ZERO);
        assert_eq!(c.get_reset_timeout(), Duration::ZERO);
        assert_eq!(c.get_reset_backoff(), Some((2.0, Duration::ZERO)));
        assert_eq!(c.get_idle_timeout(), Duration::ZERO);
        assert_eq!(c.get_deadline(), Some(Duration::ZERO));
    }

    #[test]
    #[should_panic(expected = "reset_backoff factor must be at least 1")]
    fn a_shrinking_backoff_is_refused() {
        let _ = ClientConfig::default().reset_backoff(0.5, Duration::from_secs(1));
    }

    #[test]
    #[should_panic(expected = "reset_backoff factor must be at least 1")]
    fn a_nan_backoff_is_refused() {
        let _ = ClientConfig::default().reset_backoff(f64::NAN, Duration::from_secs(1));
    }

    #[test]
    #[should_panic(expected = "reset_jitter must be between 0 and 1")]
    fn a_nan_jitter_is_refused() {
        let _ = ClientConfig::default().reset_jitter(f64::NAN);
    }

    #[test]
    #[should_panic(expected = "reset_jitter must be between 0 and 1")]
    fn a_jitter_over_one_is_refused() {
        let _ = ClientConfig::default().reset_jitter(1.5);
    }

    #[test]
    #[should_panic(expected = "max_message_size must be at least 1024 bytes")]
    fn a_zero_max_message_size_is_refused() {
        let _ = ClientConfig::default().max_message_size(0);
    }

    #[test]
    #[should_panic(expected = "retry_budget share must not be negative")]
    fn a_negative_retry_share_is_refused() {
        let _ = ClientConfig::default().retry_budget(-0.1, 10);
    }

    #[test]
    #[should_panic(expected = "retry_budget share must not be negative")]
    fn a_nan_retry_share_is_refused() {
        let _ = ClientConfig::default().retry_budget(f64::NAN, 10);
    }

    #[test]
    #[should_panic(expected = "reset_jitter must be between 0 and 1")]
    fn a_negative_jitter_is_refused() {
        let _ = ClientConfig::default().reset_jitter(-0.1);
    }

    /// A hand-written stand-in for a generated exception: `struct Busy { 1: string why }`.
    #[derive(Debug, PartialEq)]
    struct Busy(String);

    impl fmt::Display for Busy {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl StdError for Busy {}

    impl TSerializable for Busy {
        fn read_from_in_protocol(i: &mut dyn TInputProtocol) -> thrift::Result<Self> {
            i.read_struct_begin()?;
            let mut why = String::new();
            loop {
                let field = i.read_field_begin()?;
                match (field.field_type, field.id) {
                    (TType::Stop, _) => break,
                    (TType::String, Some(1)) => why = i.read_string()?,
                    (other, _) => i.skip(other)?,
                }
                i.read_field_end()?;
            }
            i.read_struct_end()?;
            Ok(Busy(why))
        }

        fn write_to_out_protocol(&self, o: &mut dyn TOutputProtocol) -> thrift::Result<()> {
            o.write_struct_begin(&TStructIdentifier::new("Busy"))?;
            o.write_field_begin(&TFieldIdentifier::new("why", TType::String, 1))?;
            o.write_string(&self.0)?;
            o.write_field_end()?;
            o.write_field_stop()?;
            o.write_struct_end()
        }
    }

    fn encode(write: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<()>) -> Vec<u8> {
        let mut out = TBinaryOutputProtocol::new(Vec::new(), true);
        write(&mut out).unwrap();
        out.transport
    }

    #[test]
    fn declared_exception_types_match_by_type() {
        let c = ClientConfig::default().failure_on::<Busy>();
        assert!(c.is_declared_failure(&Busy("x".into())));
        assert!(!c.is_declared_retryable(&Busy("x".into())));
        let io = std::io::Error::other("x");
        assert!(!c.is_declared_failure(&io));
    }

    #[test]
    fn declared_exception_types_match_by_encoding_in_the_compact_protocol_too() {
        let c = ClientConfig::default()
            .protocol(Protocol::Compact)
            .retry_on::<Busy>();
        let mut busy = Vec::new();
        Busy("later".into())
            .write_to_out_protocol(&mut thrift::protocol::TCompactOutputProtocol::new(
                &mut busy,
            ))
            .unwrap();
        assert_eq!(
            c.describe_declared_retryable(&busy).as_deref(),
            Some(r#"Busy("later")"#)
        );
    }

    #[test]
    fn declared_exception_types_match_by_encoding() {
        let c = ClientConfig::default().retry_on::<Busy>();
        let busy = encode(|o| Busy("later".into()).write_to_out_protocol(o));
        assert_eq!(
            c.describe_declared_retryable(&busy).as_deref(),
            Some(r#"Busy("later")"#)
        );
        assert!(!c.encodes_declared_failure(&busy));
        // `struct Other { 1: i32 code }` has another shape, so it is not a Busy.
        let other = encode(|o| {
            o.write_struct_begin(&TStructIdentifier::new("Other"))?;
            o.write_field_begin(&TFieldIdentifier::new("code", TType::I32, 1))?;
            o.write_i32(7)?;
            o.write_field_end()?;
            o.write_field_stop()?;
            o.write_struct_end()
        });
        assert_eq!(c.describe_declared_retryable(&other), None);
    }
}
