//! Following one service's instances in ZooKeeper, as Curator's `ServiceCache` does.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use parking_lot::RwLock;
use tokio::sync::watch;
use zookeeper_client as zk;

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
    shared: Arc<Shared>,
}

struct Shared {
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
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            instances: RwLock::new(Arc::new(Vec::new())),
            _stop: stop,
        });
        let (first, synced) = tokio::sync::oneshot::channel();
        zk.spawn(keep_synced(
            path,
            // Time for a server whose session expired to notice, start another and register
            // again; the same for every session, as a fleet's share its settings.
            zk.config().session_timeout + zk.config().connect_timeout,
            Arc::downgrade(&shared),
            on_change,
            zk.clients(),
            zk.closing(),
            stopped,
            first,
        ))?;
        let timeout = zk.config().connect_timeout;
        zk.wait(async { tokio::time::timeout(timeout, synced).await })
            .map_err(|_| {
                DiscoveryError::ZooKeeper(format!("{name}'s instances not read within {timeout:?}"))
            })?
            .map_err(|_| DiscoveryError::Closed)?;
        Ok(InstanceCache { shared })
    }

    /// The service's live, enabled instances now, sorted by id.
    pub fn instances(&self) -> Arc<Vec<ServiceInstance>> {
        self.shared.instances.read().clone()
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl fmt::Debug for InstanceCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceCache")
            .field("name", &self.shared.name)
            .field("instances", &self.shared.instances.read().len())
            .finish()
    }
}

/// Reads every instance of the service; `None` for a node that does not parse.
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
#[allow(clippy::too_many_arguments)]
async fn keep_synced(
    path: String,
    grace: Duration,
    cache: std::sync::Weak<Shared>,
    on_change: Option<Box<OnChange>>,
    mut clients: watch::Receiver<Option<zk::Client>>,
    mut closing: watch::Receiver<bool>,
    mut stopped: watch::Receiver<()>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let held = || {
        cache
            .upgrade()
            .is_some_and(|c| !c.instances.read().is_empty())
    };
    let publish = |instances: Vec<ServiceInstance>| {
        let Some(cache) = cache.upgrade() else {
            return false;
        };
        let changed = **cache.instances.read() != instances;
        if changed {
            info!(target: TARGET, "{path}: {} instance(s)", instances.len());
            let instances = Arc::new(instances);
            *cache.instances.write() = instances.clone();
            // Called with no lock held: it may read the cache.
            if let Some(on_change) = &on_change {
                on_change(&instances);
            }
        }
        true
    };
    let mut stale = false;
    // Right after ZooKeeper comes back, until then or until instances are seen again: an outage
    // past the session timeout took the fleet's nodes with their sessions, and their servers
    // are registering again. No instances read meanwhile replace the last ones; they are read
    // again when it ends.
    let mut grace_until: Option<tokio::time::Instant> = None;
    // A session ended: the next read that succeeds is a comeback, which may find the fleet's
    // nodes gone with their own sessions. (A mere reconnect loses no nodes.)
    let mut comeback = false;
    let mut first_session = true;
    'session: loop {
        let Some(client) = clients.borrow_and_update().clone() else {
            return;
        };
        // A new session follows one that ended.
        if !std::mem::take(&mut first_session) {
            stale = true;
            comeback = true;
        }
        // The watch first, then the read: no change falls between them. Set again after every
        // reconnection, since events during one can be lost (ZOOKEEPER-4698).
        'watch: loop {
            let mut watcher = loop {
                match client
                    .watch(&path, zk::AddWatchMode::PersistentRecursive)
                    .await
                {
                    Ok(watcher) => break watcher,
                    Err(err) => warn!(target: TARGET, "cannot watch {path} yet: {err}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    changed = clients.changed() => {
                        if changed.is_err() { return; }
                        continue 'session;
                    }
                    _ = closing.changed() => return,
                    _ = stopped.changed() => return,
                }
            };
            loop {
                match read(&client, &path).await {
                    Ok(instances) => {
                        let now = tokio::time::Instant::now();
                        if stale {
                            info!(target: TARGET, "{path}: synchronised again");
                            stale = false;
                        }
                        if std::mem::take(&mut comeback) {
                            grace_until = Some(now + grace);
                        }
                        let in_grace = grace_until.is_some_and(|until| now < until);
                        // Over once it has passed, or once the fleet is seen back.
                        if !in_grace || !instances.is_empty() {
                            grace_until = None;
                        }
                        if instances.is_empty() && in_grace && held() {
                            info!(target: TARGET, "{path}: no instances yet after ZooKeeper came back; keeping the last ones for up to {grace:?} while they register again");
                        } else if !publish(instances) {
                            return;
                        }
                        if let Some(first) = first.take() {
                            let _ = first.send(());
                        }
                    }
                    Err(err) => {
                        if !stale {
                            warn!(target: TARGET, "{path}: keeping the last instances, which may be stale: {err}");
                            stale = true;
                        }
                    }
                }
                // Waits for a change; after a failed read, tries again a little later, and once
                // the grace after a comeback ends, reads again what it held back.
                let retry = async {
                    if stale {
                        tokio::time::sleep(Duration::from_millis(500)).await
                    } else if let Some(until) = grace_until {
                        tokio::time::sleep_until(until).await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! {
                    event = watcher.changed() => {
                        if event.event_type == zk::EventType::Session {
                            match event.session_state {
                                zk::SessionState::Disconnected => {
                                    warn!(target: TARGET, "{path}: disconnected; keeping the last instances, which may be stale");
                                    stale = true;
                                    // Read again once reconnected.
                                    loop {
                                        let event = tokio::select! {
                                            event = watcher.changed() => event,
                                            _ = closing.changed() => return,
                                            _ = stopped.changed() => return,
                                        };
                                        match event.session_state {
                                            zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed => {
                                                stale = true;
                                                if !next_session(&mut clients, &mut closing, &mut stopped).await { return; }
                                                continue 'session;
                                            }
                                            zk::SessionState::Disconnected => {}
                                            _ => continue 'watch,
                                        }
                                    }
                                }
                                zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed => {
                                    stale = true;
                                    if !next_session(&mut clients, &mut closing, &mut stopped).await { return; }
                                    continue 'session;
                                }
                                _ => {}
                            }
                        }
                    }
                    () = retry => {}
                    changed = clients.changed() => {
                        if changed.is_err() { return; }
                        continue 'session;
                    }
                    _ = closing.changed() => return,
                    _ = stopped.changed() => return,
                }
            }
        }
    }
}

/// Waits for the session after one that ended; `false` if the cache is dropped or the handle
/// closes meanwhile (ZooKeeper may be away for long), or no session will come.
async fn next_session(
    clients: &mut watch::Receiver<Option<zk::Client>>,
    closing: &mut watch::Receiver<bool>,
    stopped: &mut watch::Receiver<()>,
) -> bool {
    tokio::select! {
        changed = clients.changed() => changed.is_ok(),
        _ = closing.changed() => false,
        _ = stopped.changed() => false,
    }
}
