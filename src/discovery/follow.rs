//! Following a handle's sessions one after another: the loop that the tasks of registrations
//! and caches share.

use std::future::Future;

use tokio::sync::watch;
use zookeeper_client as zk;

use super::session::ZooKeeper;

/// What a task does once it is done with a session's client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Starts again with the session now current: a new one after the last ended, or the
    /// same one (for a node to make again).
    Session,
    /// Ends: the handle is closing.
    Close,
    /// Ends: no session will come, the owner let go (a cache dropped, a registration closed:
    /// once it left its node), or ZooKeeper refused the node for good.
    Stop,
}

/// A task's work with one session, started again on each: a registration keeping its node,
/// a cache its instances.
pub(super) trait SessionWork {
    /// Works with the session of `client` until done with it; `sessions` tells of the next
    /// session and of the end.
    fn with_session(
        &mut self,
        client: zk::Client,
        sessions: &mut Sessions,
    ) -> impl Future<Output = Next> + Send;
}

/// A task's view of its handle's sessions: the current one's client, and word of the next
/// one or of the end.
pub(super) struct Sessions {
    /// The current client, replaced after an expiry; `None` once closed.
    clients: watch::Receiver<Option<zk::Client>>,
    closing: watch::Receiver<bool>,
    /// Ends the task once its sender is dropped, if given.
    owner: Option<watch::Receiver<()>>,
}

impl Sessions {
    /// The sessions of `zk`, from the current one on.
    pub(super) fn of(zk: &ZooKeeper) -> Sessions {
        Sessions {
            clients: zk.clients(),
            closing: zk.closing(),
            owner: None,
        }
    }

    /// The same, also ending once `owner`'s sender is dropped.
    pub(super) fn until_dropped(mut self, owner: watch::Receiver<()>) -> Sessions {
        self.owner = Some(owner);
        self
    }

    /// Runs `work` with each session in turn, until it ends or no session comes.
    pub(super) async fn run(mut self, mut work: impl SessionWork) {
        while let Some(client) = self.current() {
            if work.with_session(client, &mut self).await != Next::Session {
                return;
            }
        }
    }

    /// The current session's client, now seen; `None` once closed.
    pub(super) fn current(&mut self) -> Option<zk::Client> {
        self.clients.borrow_and_update().clone()
    }

    /// Waits for a new session, or for the end.
    pub(super) async fn next(&mut self) -> Next {
        tokio::select! {
            changed = self.clients.changed() => match changed {
                Ok(()) => Next::Session,
                Err(_) => Next::Stop,
            },
            end = closed_or_dropped(&mut self.closing, &mut self.owner) => end,
        }
    }

    /// Waits for the end only: the handle closing, or the owner letting go.
    pub(super) async fn closed_or_dropped(&mut self) -> Next {
        closed_or_dropped(&mut self.closing, &mut self.owner).await
    }
}

async fn closed_or_dropped(
    closing: &mut watch::Receiver<bool>,
    owner: &mut Option<watch::Receiver<()>>,
) -> Next {
    let dropped = async {
        match owner {
            Some(owner) => {
                let _ = owner.changed().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = closing.changed() => Next::Close,
        () = dropped => Next::Stop,
    }
}
