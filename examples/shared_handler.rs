//! A handler whose state other code shares while the server runs: the recipe for reading a
//! handler's state, or steering it, from outside the processor that owns the handler.
//!
//! The generated processor takes its handler by value. Rather than implementing the generated
//! handler trait again for an `Arc` of the handler (one delegating method per service
//! method), keep what must be shared in an `Arc` inside the handler, and hand a clone of that
//! `Arc` to the other code:
//!
//! ```text
//! cargo run --example shared_handler
//! ```

#[path = "../idl/service.rs"]
mod service;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blocking_thrift::{ClientConfig, ServerConfig, ThriftClient, ThriftServer};
use service::calculator::{
    CalculatorSyncClient, CalculatorSyncHandler, CalculatorSyncProcessor, InvalidOperation,
    TCalculatorSyncClient, TemporaryUnavailable, UserProfile,
};

/// What the server's handler and the rest of the program share.
#[derive(Default)]
struct Shared {
    calls: AtomicU64,
    profiles: Mutex<HashMap<i32, UserProfile>>,
}

/// The handler: cheap to build, all its state behind one `Arc`.
struct Handler {
    shared: Arc<Shared>,
}

impl Handler {
    fn counted<T>(&self, answer: T) -> thrift::Result<T> {
        self.shared.calls.fetch_add(1, Ordering::Relaxed);
        Ok(answer)
    }
}

impl CalculatorSyncHandler for Handler {
    fn handle_ping(&self) -> thrift::Result<()> {
        self.counted(())
    }
    fn handle_add(&self, num1: i32, num2: i32) -> thrift::Result<i32> {
        self.counted(num1.wrapping_add(num2))
    }
    fn handle_echo(&self, data: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.counted(data)
    }
    fn handle_slow(&self, millis: i32) -> thrift::Result<i32> {
        self.counted(millis)
    }
    fn handle_retrieve(&self, uid: i32) -> thrift::Result<UserProfile> {
        if uid < 0 {
            return Err(InvalidOperation::new(uid, "negative uid".to_owned()).into());
        }
        let stored = self.shared.profiles.lock().unwrap().get(&uid).cloned();
        self.counted(
            stored.unwrap_or_else(|| UserProfile::new(uid, "nobody".to_owned(), String::new())),
        )
    }
    fn handle_store(&self, user: UserProfile) -> thrift::Result<()> {
        let uid = user.uid.unwrap_or_default();
        self.shared.profiles.lock().unwrap().insert(uid, user);
        self.counted(())
    }
    fn handle_whoami(&self, fail: bool) -> thrift::Result<String> {
        if fail {
            return Err(TemporaryUnavailable::new("asked to".to_owned()).into());
        }
        self.counted("shared_handler".to_owned())
    }
    fn handle_zip(&self) -> thrift::Result<()> {
        self.counted(())
    }
    fn handle_profiles(&self, count: i32) -> thrift::Result<Vec<UserProfile>> {
        (0..count.max(0))
            .map(|uid| self.handle_retrieve(uid))
            .collect()
    }
}

fn main() -> ExitCode {
    let shared = Arc::new(Shared::default());
    let handler = Handler {
        shared: Arc::clone(&shared),
    };
    let server = ThriftServer::bind(
        "127.0.0.1:0",
        CalculatorSyncProcessor::new(handler),
        ServerConfig::default().workers(2),
    )
    .expect("bind a loopback port");
    server.start().expect("start the server");

    type Calc =
        CalculatorSyncClient<blocking_thrift::InputProtocol, blocking_thrift::OutputProtocol>;
    let client: ThriftClient<Calc> = ThriftClient::new(
        &server.local_addr().to_string(),
        CalculatorSyncClient::new,
        ClientConfig::default(),
    );
    for i in 0..10 {
        client.call(|c| c.add(i, i)).expect("add");
    }
    let profile = UserProfile::new(7, "Ada".to_owned(), "stored".to_owned());
    client.call(|c| c.store(profile)).expect("store");

    // The program reads the handler's state while the server runs...
    let calls = shared.calls.load(Ordering::Relaxed);
    let stored = shared.profiles.lock().unwrap().len();
    println!("the handler has answered {calls} calls and holds {stored} profile(s)");
    // ...and changes it.
    shared.profiles.lock().unwrap().clear();
    let profile = client.call(|c| c.retrieve(7)).expect("retrieve");
    println!("after clearing, profile 7 is {:?}", profile.name);
    client.close();
    server.stop();
    if calls == 11 && stored == 1 && profile.name.as_deref() == Some("nobody") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
