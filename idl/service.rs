//! The reference Calculator service, shared by the examples, tests and benchmarks.
//!
//! Include it with `#[path = "../idl/service.rs"] mod service;`; it brings the generated code
//! (`service::calculator`) and `CalculatorService`, a handler with the semantics written in
//! `idl/calculator.thrift`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[path = "gen/calculator.rs"]
#[allow(clippy::all, dead_code, missing_docs, unused_parens)]
pub mod calculator;

use calculator::{CalculatorSyncHandler, InvalidOperation, TemporaryUnavailable, UserProfile};

/// A Calculator handler that behaves as `idl/calculator.thrift` describes.
#[derive(Debug, Default)]
pub struct CalculatorService {
    name: String,
    profiles: Mutex<HashMap<i32, UserProfile>>,
    zips: AtomicU64,
    /// `slow` answers at once instead of sleeping.
    never_sleeps: bool,
}

impl CalculatorService {
    /// A handler whose `whoami` answers `name`.
    pub fn new(name: impl Into<String>) -> Self {
        CalculatorService {
            name: name.into(),
            ..Default::default()
        }
    }

    /// The same handler, except that `slow` answers at once: for fuzzing and property tests,
    /// whose random requests may ask it to sleep for weeks.
    pub fn never_sleeping(mut self) -> Self {
        self.never_sleeps = true;
        self
    }

    /// How many oneway `zip` calls this handler has run.
    pub fn zips(&self) -> u64 {
        self.zips.load(Ordering::SeqCst)
    }
}

impl CalculatorSyncHandler for CalculatorService {
    fn handle_ping(&self) -> thrift::Result<()> {
        Ok(())
    }

    fn handle_add(&self, num1: i32, num2: i32) -> thrift::Result<i32> {
        Ok(num1.wrapping_add(num2))
    }

    fn handle_echo(&self, data: Vec<u8>) -> thrift::Result<Vec<u8>> {
        Ok(data)
    }

    fn handle_slow(&self, millis: i32) -> thrift::Result<i32> {
        if !self.never_sleeps {
            std::thread::sleep(Duration::from_millis(millis.max(0) as u64));
        }
        Ok(millis)
    }

    fn handle_retrieve(&self, uid: i32) -> thrift::Result<UserProfile> {
        if uid < 0 {
            return Err(InvalidOperation::new(uid, format!("uid {uid} is negative")).into());
        }
        let stored = self.profiles.lock().unwrap().get(&uid).cloned();
        Ok(stored.unwrap_or_else(|| {
            UserProfile::new(uid, "Test User".to_owned(), "Thrift is great".to_owned())
        }))
    }

    fn handle_store(&self, user: UserProfile) -> thrift::Result<()> {
        let uid = user.uid.unwrap_or_default();
        self.profiles.lock().unwrap().insert(uid, user);
        Ok(())
    }

    fn handle_whoami(&self, fail: bool) -> thrift::Result<String> {
        if fail {
            return Err(TemporaryUnavailable::new(format!("{} is busy", self.name)).into());
        }
        Ok(self.name.clone())
    }

    fn handle_zip(&self) -> thrift::Result<()> {
        self.zips.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn handle_profiles(&self, count: i32) -> thrift::Result<Vec<UserProfile>> {
        if count < 0 {
            return Err(InvalidOperation::new(count, format!("count {count} is negative")).into());
        }
        (0..count).map(|uid| self.handle_retrieve(uid)).collect()
    }
}

// Lets the tests keep a handle on the handler they serve (to read `zips`, say). A program's
// own handler needs no such impl: the processor takes the handler by value, and state the
// program shares with it goes behind an `Arc` inside it (`examples/shared_handler.rs`).
impl<T: CalculatorSyncHandler> CalculatorSyncHandler for std::sync::Arc<T> {
    fn handle_ping(&self) -> thrift::Result<()> {
        (**self).handle_ping()
    }
    fn handle_add(&self, num1: i32, num2: i32) -> thrift::Result<i32> {
        (**self).handle_add(num1, num2)
    }
    fn handle_echo(&self, data: Vec<u8>) -> thrift::Result<Vec<u8>> {
        (**self).handle_echo(data)
    }
    fn handle_slow(&self, millis: i32) -> thrift::Result<i32> {
        (**self).handle_slow(millis)
    }
    fn handle_retrieve(&self, uid: i32) -> thrift::Result<UserProfile> {
        (**self).handle_retrieve(uid)
    }
    fn handle_store(&self, user: UserProfile) -> thrift::Result<()> {
        (**self).handle_store(user)
    }
    fn handle_whoami(&self, fail: bool) -> thrift::Result<String> {
        (**self).handle_whoami(fail)
    }
    fn handle_zip(&self) -> thrift::Result<()> {
        (**self).handle_zip()
    }
    fn handle_profiles(&self, count: i32) -> thrift::Result<Vec<UserProfile>> {
        (**self).handle_profiles(count)
    }
}
