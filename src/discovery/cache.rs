//! Following one service's instances in ZooKeeper, as Curator's `ServiceCache` does.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::{Arc, Weak};
use std::time::Duration;

use log::{info, warn};
use parking_lot::RwLock;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use zookeeper_client as zk;

use super::follow::{Next, SessionWork, Sessions};
use super::instance::ServiceInstance;
use super::registration::{service_path, DEFAULT_BASE_PATH};
use super::session::{ZooKeeper, TARGET};
use super::DiscoveryError;

/// Called with every new set of live instances.
type OnChange = dyn Fn(&[ServiceInstance]) + Send + Sync;

/// The live, enabled instances of one service, kept up to date by a watch on its node in
/// ZooKeeper; reading them is one cheap [`instances`](Self::instances) call.
///
/// Changes arrive within moments of happening. Instances with `enabled: false` are left out;
/// a node whose data does not parse as an instance, or that its ACL keeps from this client, is
/// skipped and logged. While ZooKeeper is unreachable the cache keeps its last instances (and
/// logs that they may be stale), and synchronises again once the session is back, or a new one
/// after it expired. Back after an outage past the session timeout, which takes the fleet's
/// nodes with their sessions, it finds no instances until their servers register again: it
/// keeps the last ones meanwhile, until instances are seen again or for at most the session
/// and connect timeouts of its own session.
///
/// Clones share the cache; it stops when the last clone is dropped or the session closes.
#[derive(Clone)]
pub struct InstanceCache {
    service: Arc<CachedService>,
}

/// The service as last read, shared by a cache's clones; its task holds it weakly.
struct CachedService {
    name: String,
    instances: RwLock<Arc<Vec<ServiceInstance>>>,
    /// Dropped with the last clone, which stops the cache's task.
    _stop: watch::Sender<()>,
}

impl InstanceCache {
    /// Follows the service `name` under [`DEFAULT_BASE_PATH`]; returns once the first
    /// snapshot is read.
    ///
    /// # Errors
    ///
    /// As [`follow_under`](Self::follow_under).
    pub fn follow(zk: &ZooKeeper, name: &str) -> Result<Self, DiscoveryError> {
        Self::follow_under(zk, DEFAULT_BASE_PATH, name, None)
    }

    /// Follows the service `name` under `base`, calling `on_change` (if given) with every new
    /// set of instances, from the session's thread: it should return quickly. It may register,
    /// update and drop [`Registration`](super::Registration)s, connect sessions and hold their
    /// handles: while it waits for ZooKeeper the session's other work moves to another thread.
    /// Returns once the first snapshot is read.
    ///
    /// # Errors
    ///
    /// Fails if `name` is not one node name or `base` not an absolute path, if the session is
    /// closed, or if the first snapshot cannot be read within the session's connect timeout.
    pub fn follow_under(
        zk: &ZooKeeper,
        base: &str,
        name: &str,
        on_change: Option<Box<OnChange>>,
    ) -> Result<Self, DiscoveryError> {
        let path = service_path(base, name)?;
        let (stop, stopped) = watch::channel(());
        let service = Arc::new(CachedService {
            name: name.to_owned(),
            instances: RwLock::new(Arc::new(Vec::new())),
            _stop: stop,
        });
        let (first, synced) = oneshot::channel();
        zk.spawn(Sessions::of(zk).until_dropped(stopped).run(CacheSync {
            path,
            // Time for a server whose session expired to notice, start another and register
            // again; the same for every session, as a fleet's share its settings.
            grace: zk.config().session_timeout + zk.config().connect_timeout,
            cache: Arc::downgrade(&service),
            on_change,
            first: Some(first),
            stale: false,
            grace_until: None,
            comeback: false,
            first_session: true,
        }))?;
        let timeout = zk.config().connect_timeout;
        zk.wait(async { tokio::time::timeout(timeout, synced).await })
            .map_err(|_| {
                DiscoveryError::ZooKeeper(format!("{name}'s instances not read within {timeout:?}"))
            })?
            .map_err(|_| DiscoveryError::Closed)?;
        Ok(InstanceCache { service })
    }

    /// The service's live, enabled instances now, sorted by id.
    pub fn instances(&self) -> Arc<Vec<ServiceInstance>> {
        self.service.instances.read().clone()
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.service.name
    }
}

impl fmt::Debug for InstanceCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceCache")
            .field("name", &self.service.name)
            .field("instances", &self.service.instances.read().len())
            .finish()
    }
}

/// Reads the service's enabled instances, sorted by node name; a node that does not parse,
/// or that we may not read, is skipped.
async fn read(client: &zk::Client, path: &str) -> Result<Vec<ServiceInstance>, zk::Error> {
    let children = match client.list_children(path).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut instances = BTreeMap::new();
    for child in children {
        let node = format!("{path}/{child}");
        let data = match client.get_data(&node).await {
            Ok((data, _)) => data,
            // Gone meanwhile.
            Err(zk::Error::NoNode) => continue,
            // Not ours to read (another tool's node, with an ACL that leaves us out): one
            // node that cannot be used, skipped as one that does not parse, not the service.
            Err(err @ zk::Error::NoAuth) => {
                warn!(target: TARGET, "skipping {node}: {err}");
                continue;
            }
            Err(err) => return Err(err),
        };
        match ServiceInstance::from_json(&data) {
            Ok(instance) if instance.enabled => {
                instances.insert(child, instance);
            }
            Ok(_) => {}
            Err(err) => warn!(target: TARGET, "skipping {node}: {err}"),
        }
    }
    Ok(instances.into_values().collect())
}

/// The cache's task: reads the instances whenever the watch on the service reports a change,
/// and again after a reconnect or a new session.
struct CacheSync {
    path: String,
    /// How long after a comeback an empty read leaves the last instances in place.
    grace: Duration,
    cache: Weak<CachedService>,
    on_change: Option<Box<OnChange>>,
    /// Told once the first snapshot is read.
    first: Option<oneshot::Sender<()>>,
    /// Whether the instances held may be out of date: ZooKeeper could not be read.
    stale: bool,
    /// Right after ZooKeeper comes back, until then or until instances are seen again: an
    /// outage past the session timeout took the fleet's nodes with their sessions, and their
    /// servers are registering again. No instances read meanwhile replace the last ones; they
    /// are read again when it ends.
    grace_until: Option<Instant>,
    /// A session ended: the next read that succeeds is a comeback, which may find the fleet's
    /// nodes gone with their own sessions. (A mere reconnect loses no nodes.)
    comeback: bool,
    /// Whether no session has been followed yet: every later one follows one that ended.
    first_session: bool,
}

impl SessionWork for CacheSync {
    async fn with_session(&mut self, client: zk::Client, sessions: &mut Sessions) -> Next {
        // A new session follows one that ended.
        if !std::mem::take(&mut self.first_session) {
            self.stale = true;
            self.comeback = true;
        }
        // The watch first, then the read: no change falls between them. Set again after every
        // reconnection, since events during one can be lost (ZOOKEEPER-4698).
        loop {
            let watcher = match self.watch(&client, sessions).await {
                ControlFlow::Continue(watcher) => watcher,
                ControlFlow::Break(next) => return next,
            };
            if let ControlFlow::Break(next) =
                self.refresh_on_changes(&client, watcher, sessions).await
            {
                return next;
            }
        }
    }
}

impl CacheSync {
    /// Sets the watch on the service, trying again until it is set or the session changes.
    async fn watch(
        &self,
        client: &zk::Client,
        sessions: &mut Sessions,
    ) -> ControlFlow<Next, zk::PersistentWatcher> {
        loop {
            match client
                .watch(&self.path, zk::AddWatchMode::PersistentRecursive)
                .await
            {
                Ok(watcher) => return ControlFlow::Continue(watcher),
                Err(err) => warn!(target: TARGET, "cannot watch {} yet: {err}", self.path),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                next = sessions.next() => return ControlFlow::Break(next),
            }
        }
    }

    /// Reads the instances, and again whenever `watcher` reports a change; `Continue` once
    /// reconnected, for the watch to be set again.
    async fn refresh_on_changes(
        &mut self,
        client: &zk::Client,
        mut watcher: zk::PersistentWatcher,
        sessions: &mut Sessions,
    ) -> ControlFlow<Next> {
        loop {
            self.refresh(client).await?;
            let retry = self.retry();
            tokio::select! {
                event = watcher.changed() => {
                    if event.event_type == zk::EventType::Session {
                        match event.session_state {
                            zk::SessionState::Disconnected => {
                                warn!(target: TARGET, "{}: disconnected; keeping the last instances, which may be stale", self.path);
                                self.stale = true;
                                return self.reconnected(&mut watcher, sessions).await;
                            }
                            zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed => {
                                return ControlFlow::Break(self.next_session(sessions).await);
                            }
                            _ => {}
                        }
                    }
                }
                () = retry => {}
                next = sessions.next() => return ControlFlow::Break(next),
            }
        }
    }

    /// Reads the instances and publishes them, unless the grace after a comeback holds back
    /// an empty set; `Break` once the cache is gone.
    async fn refresh(&mut self, client: &zk::Client) -> ControlFlow<Next> {
        let instances = match read(client, &self.path).await {
            Ok(instances) => instances,
            Err(err) => {
                if !self.stale {
                    warn!(target: TARGET, "{}: keeping the last instances, which may be stale: {err}", self.path);
                    self.stale = true;
                }
                return ControlFlow::Continue(());
            }
        };
        let now = Instant::now();
        if self.stale {
            info!(target: TARGET, "{}: synchronised again", self.path);
            self.stale = false;
        }
        if std::mem::take(&mut self.comeback) {
            self.grace_until = Some(now + self.grace);
        }
        let in_grace = self.grace_until.is_some_and(|until| now < until);
        // Over once it has passed, or once the fleet is seen back.
        if !in_grace || !instances.is_empty() {
            self.grace_until = None;
        }
        if instances.is_empty() && in_grace && self.holds_instances() {
            info!(target: TARGET, "{}: no instances yet after ZooKeeper came back; keeping the last ones for up to {:?} while they register again", self.path, self.grace);
        } else if !self.publish(instances) {
            return ControlFlow::Break(Next::Stop);
        }
        if let Some(first) = self.first.take() {
            let _ = first.send(());
        }
        ControlFlow::Continue(())
    }

    /// When to read again with no change reported: a little after a failed read, and once the
    /// grace after a comeback ends, to read again what it held back.
    fn retry(&self) -> impl Future<Output = ()> {
        let (stale, grace_until) = (self.stale, self.grace_until);
        async move {
            if stale {
                tokio::time::sleep(Duration::from_millis(500)).await
            } else if let Some(until) = grace_until {
                tokio::time::sleep_until(until).await
            } else {
                std::future::pending().await
            }
        }
    }

    /// Waits, after a disconnection, for the session to come back (`Continue`: the watch is
    /// set again, then the instances read) or to end.
    async fn reconnected(
        &mut self,
        watcher: &mut zk::PersistentWatcher,
        sessions: &mut Sessions,
    ) -> ControlFlow<Next> {
        loop {
            let event = tokio::select! {
                event = watcher.changed() => event,
                end = sessions.closed_or_dropped() => return ControlFlow::Break(end),
            };
            match event.session_state {
                zk::SessionState::Expired
                | zk::SessionState::Closed
                | zk::SessionState::AuthFailed => {
                    return ControlFlow::Break(self.next_session(sessions).await)
                }
                zk::SessionState::Disconnected => {}
                _ => return ControlFlow::Continue(()),
            }
        }
    }

    /// Marks the instances stale and waits for the session after one that ended: ZooKeeper
    /// may be away for long, and the cache dropped or the handle closed meanwhile.
    async fn next_session(&mut self, sessions: &mut Sessions) -> Next {
        self.stale = true;
        sessions.next().await
    }

    /// Whether the cache, if still there, holds any instance.
    fn holds_instances(&self) -> bool {
        self.cache
            .upgrade()
            .is_some_and(|c| !c.instances.read().is_empty())
    }

    /// Puts `instances` in the cache if they changed, and calls back; `false` once the cache
    /// is gone.
    fn publish(&self, instances: Vec<ServiceInstance>) -> bool {
        let Some(cache) = self.cache.upgrade() else {
            return false;
        };
        let changed = **cache.instances.read() != instances;
        if changed {
            info!(target: TARGET, "{}: {} instance(s)", self.path, instances.len());
            let instances = Arc::new(instances);
            *cache.instances.write() = instances.clone();
            // Called with no lock held: it may read the cache.
            if let Some(on_change) = &self.on_change {
                on_change(&instances);
            }
        }
        true
    }
}
