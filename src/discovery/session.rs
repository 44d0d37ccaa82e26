//! A ZooKeeper session kept alive for as long as the handle lives: it reconnects by itself,
//! and after the session expires it starts a new one, which registrations and caches follow.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

use super::DiscoveryError;

pub(super) const TARGET: &str = "blocking_thrift::discovery";

/// How to reach ZooKeeper. Defaults: 10 s session timeout, 5 s connect timeout.
#[derive(Clone, Debug)]
pub struct ZooKeeperConfig {
    pub(super) session_timeout: Duration,
    pub(super) connect_timeout: Duration,
}

impl Default for ZooKeeperConfig {
    fn default() -> Self {
        ZooKeeperConfig {
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl ZooKeeperConfig {
    /// How long ZooKeeper keeps the session (and its instances' nodes) while it cannot hear
    /// from this process. Defaults to 10 s; the server bounds it to between 2 and 20 of its
    /// ticks (4 s to 40 s by default).
    ///
    /// A process that dies leaves its services' fleets within this time.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How long [`ZooKeeper::connect`] may take to establish the first session. Defaults to
    /// 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// A session with a ZooKeeper ensemble, for registering service instances and following
/// services' fleets. Blocking: its own small async runtime (one thread) runs the ZooKeeper
/// client behind it.
///
/// While ZooKeeper is unreachable the session waits and reconnects, keeping its ephemeral
/// nodes and watches as long as the session lasts; once the session has expired it starts a
/// new one, on which [`Registration`](super::Registration)s re-create their nodes and
/// [`InstanceCache`](super::InstanceCache)s re-synchronise. Clones share the session.
/// [`close`](Self::close) ends it (deleting every ephemeral node it holds) and joins its
/// thread; so does dropping the last clone, together with every registration and cache.
///
/// The ZooKeeper client underneath does its socket I/O and timing on the `async-io` crate's
/// reactor: one thread for the whole process (named `async-io`), started with the first
/// session and shared by all of them, which no session can join.
#[derive(Clone)]
pub struct ZooKeeper {
    inner: Arc<Inner>,
}

struct Inner {
    hosts: String,
    config: ZooKeeperConfig,
    handle: Handle,
    /// The runtime, until the session is closed; dropping it stops and joins its thread.
    runtime: Mutex<Option<Runtime>>,
    /// The current client, replaced after an expiry; `None` once closed.
    client: watch::Receiver<Option<zk::Client>>,
    closed: watch::Sender<bool>,
    /// The tasks of the session, its registrations and caches, which end once it closes.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl ZooKeeper {
    /// Connects to the ensemble `hosts` (`host:port,host:port`, optionally followed by a
    /// chroot path: `host:port/apps`).
    ///
    /// # Errors
    ///
    /// Fails if no session could be established within the connect timeout (no server
    /// reachable, say), or if `hosts` is malformed.
    pub fn connect(hosts: &str, config: ZooKeeperConfig) -> Result<ZooKeeper, DiscoveryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("blocking-thrift-zookeeper")
            .on_thread_start(|| SESSION_THREAD.set(true))
            .enable_all()
            .build()
            .map_err(|err| DiscoveryError::ZooKeeper(err.to_string()))?;
        let handle = runtime.handle().clone();
        let first = blocking(|| {
            handle.block_on(async {
                tokio::time::timeout(config.connect_timeout, connect(hosts, &config)).await
            })
        });
        let connected = match first {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(err)) => Err(DiscoveryError::ZooKeeper(err.to_string())),
            Err(_) => Err(DiscoveryError::ZooKeeper(format!(
                "no session with {hosts} within {:?}",
                config.connect_timeout
            ))),
        };
        let client = match connected {
            Ok(client) => client,
            Err(err) => {
                // Not dropped: on a runtime's thread (a cache's callback), that would panic.
                runtime.shutdown_background();
                return Err(err);
            }
        };
        info!(target: TARGET, "session {:?} with {hosts}", client.session_id());
        let (publish, current) = watch::channel(Some(client.clone()));
        let (closed, closing) = watch::channel(false);
        let keeper = handle.spawn(
            SessionKeeper {
                hosts: hosts.to_owned(),
                config: config.clone(),
                publish,
                closing,
            }
            .run(client),
        );
        Ok(ZooKeeper {
            inner: Arc::new(Inner {
                hosts: hosts.to_owned(),
                config,
                handle,
                runtime: Mutex::new(Some(runtime)),
                client: current,
                closed,
                tasks: Mutex::new(vec![keeper]),
            }),
        })
    }

    /// The id of the current session, which changes when a new session replaces one that
    /// expired; `None` once closed.
    pub fn session_id(&self) -> Option<i64> {
        self.inner
            .client
            .borrow()
            .as_ref()
            .map(|client| client.session_id().0)
    }

    /// The ensemble, as given to [`connect`](Self::connect).
    pub fn hosts(&self) -> &str {
        &self.inner.hosts
    }

    /// Ends the session, deleting the ephemeral nodes it holds, and joins the session's
    /// threads. Registrations and caches on it stop; a cache keeps its last instances.
    /// Closing twice is harmless.
    ///
    /// In an async runtime's context it closes the session from a thread of its own and waits
    /// for it; on a session's own thread (in a cache's callback), where it cannot wait, it
    /// returns at once.
    pub fn close(&self) {
        self.inner.close();
    }

    pub(super) fn config(&self) -> &ZooKeeperConfig {
        &self.inner.config
    }

    /// Follows the current client: a new one after each expiry, `None` once closed.
    pub(super) fn clients(&self) -> watch::Receiver<Option<zk::Client>> {
        self.inner.client.clone()
    }

    pub(super) fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closed.subscribe()
    }

    /// Runs `work` on the session's runtime until the session closes; a registration or a
    /// cache keeping itself up to date.
    pub(super) fn spawn(
        &self,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DiscoveryError> {
        let mut tasks = self.inner.tasks.lock();
        if self.inner.runtime.lock().is_none() {
            return Err(DiscoveryError::Closed);
        }
        tasks.retain(|task| !task.is_finished());
        tasks.push(self.inner.handle.spawn(work));
        Ok(())
    }

    /// Waits for `work` done on the session's runtime.
    pub(super) fn wait<T>(&self, work: impl Future<Output = T>) -> T {
        blocking(|| self.inner.handle.block_on(work))
    }
}

thread_local! {
    /// Whether this thread is one of a session's runtime (where caches call their callbacks).
    static SESSION_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `wait`, which blocks the thread until work on a session's runtime is done. On a
/// session's own thread (in a cache's callback, say) its other tasks move to another thread
/// meanwhile, so that they can do that work.
fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    if SESSION_THREAD.get() {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

impl Inner {
    fn close(&self) {
        let _ = self.closed.send(true);
        // Both under the lock `spawn` takes first: a task it adds is either among those waited
        // for below, or refused since the runtime is gone.
        let (tasks, runtime) = {
            let mut tasks = self.tasks.lock();
            (std::mem::take(&mut *tasks), self.runtime.lock().take())
        };
        let Some(runtime) = runtime else {
            return;
        };
        if Handle::try_current().is_err() {
            finish(runtime, tasks, &self.hosts, self.config.connect_timeout);
            return;
        }
        // In an async runtime's context, where blocking on another runtime panics: a thread of
        // its own closes the session, and this one waits for it, unless it is one of a
        // session's own threads (a cache's callback held the last handle), which cannot wait
        // for its session to stop.
        let parts = Arc::new(Mutex::new(Some((runtime, tasks))));
        let (hosts, timeout) = (self.hosts.clone(), self.config.connect_timeout);
        let closing = std::thread::Builder::new()
            .name("blocking-thrift-zookeeper-close".to_owned())
            .spawn({
                let parts = parts.clone();
                move || {
                    if let Some((runtime, tasks)) = parts.lock().take() {
                        finish(runtime, tasks, &hosts, timeout);
                    }
                }
            });
        match closing {
            Ok(closing) if !SESSION_THREAD.get() => {
                let _ = closing.join();
            }
            Ok(_) => {}
            Err(err) => {
                warn!(target: TARGET, "cannot close the session with {}: {err}", self.hosts);
                if let Some((runtime, _)) = parts.lock().take() {
                    runtime.shutdown_background();
                }
            }
        }
    }
}

/// Lets the tasks of a closing session end, within `timeout`, then stops its runtime.
fn finish(runtime: Runtime, tasks: Vec<JoinHandle<()>>, hosts: &str, timeout: Duration) {
    runtime.block_on(async {
        // Registrations delete their nodes, caches stop; then every client is dropped and the
        // ZooKeeper client's own task ends the session.
        let _ = tokio::time::timeout(timeout, futures_all(tasks)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    info!(target: TARGET, "session with {hosts} closed");
}

async fn futures_all(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

impl fmt::Debug for ZooKeeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZooKeeper")
            .field("hosts", &self.inner.hosts)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// Establishes a session, trying for as long as the caller's timeout around it lets: the
/// ZooKeeper client gives up after one session timeout, which may be the shorter.
async fn connect(hosts: &str, config: &ZooKeeperConfig) -> Result<zk::Client, zk::Error> {
    loop {
        let attempt = zk::Client::connector()
            .with_session_timeout(config.session_timeout)
            .with_connection_timeout(config.connect_timeout)
            .connect(hosts)
            .await;
        match attempt {
            Err(zk::Error::Timeout) => {
                info!(target: TARGET, "no session with {hosts} within the session timeout; trying again")
            }
            attempt => return attempt,
        }
    }
}

/// The session's own task: watches the session and, once it has ended, starts a new one and
/// publishes its client; publishes `None` once the handle closes.
struct SessionKeeper {
    hosts: String,
    config: ZooKeeperConfig,
    publish: watch::Sender<Option<zk::Client>>,
    closing: watch::Receiver<bool>,
}

impl SessionKeeper {
    /// Keeps a session from `client`'s on, until the handle closes.
    async fn run(mut self, mut client: zk::Client) {
        loop {
            let Some(state) = self.expired(&client).await else {
                break;
            };
            let hosts = &self.hosts;
            if state == zk::SessionState::Expired {
                warn!(target: TARGET, "session with {hosts} expired; starting a new one");
            } else {
                warn!(target: TARGET, "session with {hosts} ended: {state:?}; starting a new one");
            }
            let Some(renewed) = self.renewed().await else {
                break;
            };
            client = renewed;
            info!(target: TARGET, "new session {:?} with {}", client.session_id(), self.hosts);
            let _ = self.publish.send(Some(client.clone()));
        }
        let _ = self.publish.send(None);
    }

    /// Waits for the session of `client` to expire (or be closed, or fail to authenticate),
    /// logging its disconnections; `None` once the handle closes first.
    async fn expired(&mut self, client: &zk::Client) -> Option<zk::SessionState> {
        let hosts = &self.hosts;
        let mut states = client.state_watcher();
        // The watcher starts at the session's state now, and a session that ended before it
        // was made sends no change to wait for.
        let mut state = states.peek_state();
        while !matches!(
            state,
            zk::SessionState::Expired | zk::SessionState::AuthFailed | zk::SessionState::Closed
        ) {
            state = tokio::select! {
                state = states.changed() => state,
                _ = self.closing.changed() => return None,
            };
            match state {
                zk::SessionState::Disconnected => {
                    warn!(target: TARGET, "disconnected from {hosts}; reconnecting")
                }
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    info!(target: TARGET, "reconnected to {hosts}")
                }
                _ => {}
            }
        }
        Some(state)
    }

    /// Starts a new session, trying until one is made; `None` once the handle closes first.
    async fn renewed(&mut self) -> Option<zk::Client> {
        let (hosts, config) = (&self.hosts, &self.config);
        loop {
            let attempt = tokio::select! {
                attempt = tokio::time::timeout(config.connect_timeout, connect(hosts, config)) => attempt,
                _ = self.closing.changed() => return None,
            };
            match attempt {
                Ok(Ok(client)) => return Some(client),
                Ok(Err(err)) => warn!(target: TARGET, "no new session with {hosts} yet: {err}"),
                Err(_) => warn!(target: TARGET, "no new session with {hosts} yet: timed out"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
