//! Keeping a service instance's node in ZooKeeper, as Curator's `ServiceDiscovery` does.

use std::fmt;
use std::ops::ControlFlow;
use std::time::Duration;

use log::{debug, info, warn};
use tokio::sync::{mpsc, oneshot};
use zookeeper_client as zk;

use super::follow::{Next, SessionWork, Sessions};
use super::instance::ServiceInstance;
use super::session::{ZooKeeper, TARGET};
use super::DiscoveryError;

/// Where Curator keeps services unless told otherwise.
pub const DEFAULT_BASE_PATH: &str = "/service";

/// A service instance kept registered in ZooKeeper, at `<base>/<service name>/<instance id>`
/// (Curator's layout): an ephemeral node holding the instance's JSON, its parents made as
/// container nodes where the server supports them.
///
/// The node is re-created, with the same id and data, whenever it goes: after the session
/// expired and a new one began, or if someone deleted it. [`update`](Self::update) rewrites
/// it (to disable an instance that is draining, say), and the node keeps the update's data
/// from then on; [`close`](Self::close), or dropping the registration, deletes it.
pub struct Registration {
    zk: ZooKeeper,
    path: String,
    instance: ServiceInstance,
    commands: mpsc::UnboundedSender<Command>,
}

enum Command {
    Update(Vec<u8>, oneshot::Sender<Result<(), DiscoveryError>>),
    Close(oneshot::Sender<()>),
}

impl Registration {
    /// Registers `instance` under [`DEFAULT_BASE_PATH`]; see [`register_under`](Self::register_under).
    ///
    /// # Errors
    ///
    /// As [`register_under`](Self::register_under).
    pub fn register(zk: &ZooKeeper, instance: ServiceInstance) -> Result<Self, DiscoveryError> {
        Self::register_under(zk, DEFAULT_BASE_PATH, instance)
    }

    /// Registers `instance` under `base` (`/service` in Curator's default layout) and returns
    /// once its node exists.
    ///
    /// # Errors
    ///
    /// Fails if the instance's name or id is not one node name, if `base` is not an absolute
    /// path, if the session is closed, or if ZooKeeper refuses the node (the session is down
    /// for longer than its connect timeout, say).
    pub fn register_under(
        zk: &ZooKeeper,
        base: &str,
        instance: ServiceInstance,
    ) -> Result<Self, DiscoveryError> {
        instance.check()?;
        let path = instance_path(base, &instance.name, &instance.id)?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let (created, first) = oneshot::channel();
        zk.spawn(Sessions::of(zk).run(NodeKeeper {
            path: path.clone(),
            data: instance.to_json(),
            commands: receiver,
            created: Some(created),
            unwritten: Vec::new(),
            node_behind: false,
        }))?;
        let timeout = zk_timeout(zk);
        zk.wait(async { tokio::time::timeout(timeout, first).await })
            .map_err(|_| {
                DiscoveryError::ZooKeeper(format!("{path} not created within {timeout:?}"))
            })?
            .map_err(|_| DiscoveryError::Closed)??;
        info!(target: TARGET, "registered {path}");
        Ok(Registration {
            zk: zk.clone(),
            path,
            instance,
            commands,
        })
    }

    /// The instance as last registered.
    pub fn instance(&self) -> &ServiceInstance {
        &self.instance
    }

    /// The instance's node.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Rewrites the instance's node with `instance` (same name and id); for example
    /// `enabled: false` while the instance drains. Returns once the node holds it.
    ///
    /// From this call on, `instance` is what the registration keeps, even if the write fails
    /// for now: as with Curator's `updateService`, the node is written (or re-created) with it
    /// as soon as ZooKeeper lets, and [`instance`](Self::instance) returns it.
    ///
    /// # Errors
    ///
    /// Fails if the name or id changed, or if the session is closed (then nothing is kept);
    /// or if the node could not be written within the session's connect timeout.
    pub fn update(&mut self, instance: ServiceInstance) -> Result<(), DiscoveryError> {
        if instance.name != self.instance.name || instance.id != self.instance.id {
            return Err(DiscoveryError::InvalidName(
                "an update keeps the instance's name and id".to_owned(),
            ));
        }
        let (ack, done) = oneshot::channel();
        self.commands
            .send(Command::Update(instance.to_json(), ack))
            .map_err(|_| DiscoveryError::Closed)?;
        self.instance = instance;
        let timeout = zk_timeout(&self.zk);
        self.zk
            .wait(async { tokio::time::timeout(timeout, done).await })
            .map_err(|_| {
                DiscoveryError::ZooKeeper(format!("{} not updated within {timeout:?}", self.path))
            })?
            .map_err(|_| DiscoveryError::Closed)?
    }

    /// Deletes the instance's node and stops keeping it; returns once it is deleted (or the
    /// session's connect timeout passed). Dropping the registration does the same.
    pub fn close(self) {}

    fn delete(&mut self) {
        let (ack, done) = oneshot::channel();
        if self.commands.send(Command::Close(ack)).is_ok() {
            let timeout = zk_timeout(&self.zk);
            let _ = self
                .zk
                .wait(async { tokio::time::timeout(timeout, done).await });
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.delete();
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("path", &self.path)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

fn zk_timeout(zk: &ZooKeeper) -> Duration {
    zk.config().connect_timeout
}

/// `<base>/<name>/<id>`, each checked.
pub(super) fn instance_path(base: &str, name: &str, id: &str) -> Result<String, DiscoveryError> {
    super::instance::check_name("instance id", id)?;
    Ok(format!("{}/{id}", service_path(base, name)?))
}

/// `<base>/<name>`, each checked.
pub(super) fn service_path(base: &str, name: &str) -> Result<String, DiscoveryError> {
    super::instance::check_name("service name", name)?;
    if !base.starts_with('/') || base.ends_with('/') && base != "/" {
        return Err(DiscoveryError::InvalidName(format!(
            "base path {base:?} must start with '/' and not end with one"
        )));
    }
    if base != "/" {
        for segment in base[1..].split('/') {
            super::instance::check_name("base path segment", segment)?;
        }
    }
    Ok(if base == "/" {
        format!("/{name}")
    } else {
        format!("{base}/{name}")
    })
}

/// Creates the node, its parents first (as containers), replacing a node left by another
/// session.
async fn create_node(client: &zk::Client, path: &str, data: &[u8]) -> Result<(), zk::Error> {
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let parents = zk::CreateMode::Container.with_acls(zk::Acls::anyone_all());
    loop {
        match client.create(path, data, &ephemeral).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NoNode) => {
                let parent = &path[..path.rfind('/').unwrap_or(0)];
                match client.mkdir(parent, &parents).await {
                    Ok(()) | Err(zk::Error::NodeExists) => {}
                    // Servers before 3.5 have no container nodes.
                    Err(zk::Error::Unimplemented) => {
                        let persistent =
                            zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                        client.mkdir(parent, &persistent).await?
                    }
                    Err(err) => return Err(err),
                }
            }
            // Left by an earlier session of this instance, not yet expired: ours replaces it,
            // as Curator's does.
            Err(zk::Error::NodeExists) => match client.delete(path, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(err) => return Err(err),
            },
            Err(err) => return Err(err),
        }
    }
}

/// A caller waiting for an update to be written.
type Ack = oneshot::Sender<Result<(), DiscoveryError>>;

/// The registration's task: creates the node, re-creates it whenever it goes, applies updates,
/// and deletes it on close.
///
/// An update is never dropped: one that cannot be written now (ZooKeeper is away, or the node
/// is being re-created) is written when it can be, as Curator's `updateService` does; its
/// caller, if still waiting, is told then.
struct NodeKeeper {
    path: String,
    /// What the node is to hold: the instance's JSON, as last updated.
    data: Vec<u8>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// The caller of `register_under`, until the node first exists.
    created: Option<oneshot::Sender<Result<(), DiscoveryError>>>,
    /// Updates taken into `data` and not yet written to the node.
    unwritten: Vec<Ack>,
    /// Whether `data` is newer than what the node holds: an update whose write failed.
    node_behind: bool,
}

impl SessionWork for NodeKeeper {
    async fn with_session(&mut self, client: zk::Client, sessions: &mut Sessions) -> Next {
        if let ControlFlow::Break(next) = self.create(&client, sessions).await {
            return next;
        }
        answer(&mut self.unwritten, Ok(()));
        if let Some(created) = self.created.take() {
            let _ = created.send(Ok(()));
        } else {
            info!(target: TARGET, "registered {} again", self.path);
        }
        self.keep(&client, sessions).await
    }
}

impl NodeKeeper {
    /// (Re-)creates the node, until it exists, the session changes or ZooKeeper refuses it for
    /// good. The first time, the caller stops waiting after its timeout and drops the
    /// registration.
    async fn create(&mut self, client: &zk::Client, sessions: &mut Sessions) -> ControlFlow<Next> {
        loop {
            match create_node(client, &self.path, &self.data).await {
                Ok(()) => return ControlFlow::Continue(()),
                Err(
                    err @ (zk::Error::InvalidAcl | zk::Error::NoAuth | zk::Error::BadArguments(_)),
                ) => {
                    if let Some(created) = self.created.take() {
                        let _ = created.send(Err(DiscoveryError::ZooKeeper(err.to_string())));
                    }
                    answer(&mut self.unwritten, Err(err));
                    return ControlFlow::Break(Next::Stop);
                }
                Err(err) => warn!(target: TARGET, "cannot register {} yet: {err}", self.path),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                next = sessions.next() => return ControlFlow::Break(next),
                // The node may exist: a create that failed for want of an answer may have
                // been made.
                command = self.commands.recv() => self.take_command(command, sessions).await?,
            }
        }
    }

    /// Keeps the node, writing updates to it, until it goes or the session changes.
    async fn keep(&mut self, client: &zk::Client, sessions: &mut Sessions) -> Next {
        self.node_behind = false;
        loop {
            let gone = match self.write_and_watch(client, sessions).await {
                ControlFlow::Continue(gone) => gone,
                ControlFlow::Break(next) => return next,
            };
            tokio::select! {
                event = gone.changed() => {
                    if event.event_type == zk::EventType::NodeDeleted {
                        warn!(target: TARGET, "{} was deleted; registering it again", self.path);
                        return Next::Session;
                    }
                    // A data change (ours) or the session's end: look again.
                    if matches!(event.session_state, zk::SessionState::Expired | zk::SessionState::Closed) {
                        // The node went with the session: it is made again on the next one.
                        return self.next_session(sessions).await;
                    }
                }
                next = sessions.next() => {
                    if next == Next::Close {
                        let _ = client.delete(&self.path, None).await;
                    }
                    return next;
                }
                command = self.commands.recv() => {
                    if let ControlFlow::Break(next) = self.take_command(command, sessions).await {
                        return next;
                    }
                    self.node_behind = true;
                }
            }
        }
    }

    /// Writes `data` to the node if it is behind, then watches it; tries again, taking
    /// commands meanwhile, until it can or the node or session is gone.
    async fn write_and_watch(
        &mut self,
        client: &zk::Client,
        sessions: &mut Sessions,
    ) -> ControlFlow<Next, zk::OneshotWatcher> {
        loop {
            let looked = if self.node_behind {
                match client.set_data(&self.path, &self.data, None).await {
                    Ok(_) => {
                        self.node_behind = false;
                        answer(&mut self.unwritten, Ok(()));
                        client.check_and_watch_stat(&self.path).await
                    }
                    Err(zk::Error::NoNode) => return ControlFlow::Break(Next::Session),
                    Err(err) => Err(err),
                }
            } else {
                client.check_and_watch_stat(&self.path).await
            };
            let err = match looked {
                Ok((Some(_), watcher)) => return ControlFlow::Continue(watcher),
                Ok((None, _)) => return ControlFlow::Break(Next::Session),
                Err(err) => err,
            };
            debug!(target: TARGET, "cannot write or watch {}: {err}", self.path);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                next = sessions.next() => return ControlFlow::Break(next),
                command = self.commands.recv() => {
                    self.take_command(command, sessions).await?;
                    self.node_behind = true;
                }
            }
        }
    }

    /// Waits for the session after the one that took the node along, taking commands
    /// meanwhile.
    async fn next_session(&mut self, sessions: &mut Sessions) -> Next {
        loop {
            tokio::select! {
                next = sessions.next() => return next,
                command = self.commands.recv() => {
                    if let ControlFlow::Break(next) = self.take_command(command, sessions).await {
                        return next;
                    }
                }
            }
        }
    }

    /// Takes a command, or `None` once its sender is gone (registering gave up): an update
    /// becomes the data the node is written with next, its caller told once it is; a close or
    /// `None` ends the task (`Break`) once the node is left (see [`leave`](Self::leave)).
    async fn take_command(
        &mut self,
        command: Option<Command>,
        sessions: &mut Sessions,
    ) -> ControlFlow<Next> {
        let closed = match command {
            Some(Command::Update(bytes, ack)) => {
                self.data = bytes;
                self.unwritten.push(ack);
                return ControlFlow::Continue(());
            }
            Some(Command::Close(ack)) => Some(ack),
            None => None,
        };
        self.leave(sessions, closed).await;
        ControlFlow::Break(Next::Stop)
    }

    /// Deletes the node for good, and then tells `closed` (the caller of `close`, if it still
    /// waits). A delete that fails for want of ZooKeeper is tried again: the node would
    /// otherwise stay for as long as its session, which outlives a blip in the connection.
    /// Done once the node is gone, or its session (which takes it along), or the whole handle
    /// is closing (whose close ends the session).
    async fn leave(&self, sessions: &mut Sessions, closed: Option<oneshot::Sender<()>>) {
        let path = &self.path;
        loop {
            let Some(client) = sessions.current() else {
                break;
            };
            match client.delete(path, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {
                    info!(target: TARGET, "unregistered {path}");
                    break;
                }
                Err(
                    zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed,
                ) => break,
                Err(
                    err @ (zk::Error::NoAuth
                    | zk::Error::BadArguments(_)
                    | zk::Error::NotEmpty
                    | zk::Error::Unimplemented),
                ) => {
                    warn!(target: TARGET, "cannot delete {path}: {err}; it goes with the session");
                    break;
                }
                Err(err) => warn!(target: TARGET, "cannot delete {path} yet: {err}; trying again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                // A new session (the node went with the old one), or the handle closing.
                _ = sessions.next() => break,
            }
        }
        if let Some(closed) = closed {
            let _ = closed.send(());
        }
    }
}

/// Tells the callers of updates now written (or refused for good) how it went.
fn answer(unwritten: &mut Vec<Ack>, result: Result<(), zk::Error>) {
    for ack in unwritten.drain(..) {
        let _ = ack.send(
            result
                .clone()
                .map_err(|err| DiscoveryError::ZooKeeper(err.to_string())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_curators_layout_and_refuse_what_is_not_one_node() {
        assert_eq!(
            instance_path("/service", "calc", "id-1").unwrap(),
            "/service/calc/id-1"
        );
        assert_eq!(instance_path("/", "calc", "a").unwrap(), "/calc/a");
        assert_eq!(
            service_path("/apps/services", "calc").unwrap(),
            "/apps/services/calc"
        );
        assert!(service_path("service", "calc").is_err());
        assert!(service_path("/service/", "calc").is_err());
        assert!(service_path("/service", "a/b").is_err());
        // What ZooKeeper would refuse only once asked, after the connect timeout.
        assert!(service_path("/apps//service", "calc").is_err());
        assert!(service_path("/apps/./service", "calc").is_err());
        assert!(service_path("/service", "calc\0").is_err());
        assert!(instance_path("/service", "calc", "id\u{7f}").is_err());
        assert!(instance_path("/service", "calc", "id\u{fff5}").is_err());
        assert!(instance_path("/service", "calc", "id-é-1").is_ok());
    }
}
