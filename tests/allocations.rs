//! The client's per-call path allocates no more than the generated code itself does: a call
//! through `ThriftClient` makes no more allocations on the calling thread than the same call
//! through the generated client on one plain `thrift` crate connection.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use blocking_thrift::{ClientConfig, Protocol, ThriftClient, Transport};
use support::calculator::{CalculatorSyncClient, TCalculatorSyncClient};
use support::{Calc, RefServer};

blocking_thrift::impl_direct!(support::calculator::TCalculatorSyncClientMarker);
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{TFramedReadTransport, TFramedWriteTransport, TIoChannel, TTcpChannel};

struct PerThread;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts, in a thread-local cell
// that needs no allocation or destructor.
unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: PerThread = PerThread;

fn allocations_during(calls: u64, mut call: impl FnMut()) -> u64 {
    // Warm up: connections, buffers and pool slots are made once, not per call.
    for _ in 0..10 {
        call();
    }
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..calls {
        call();
    }
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn a_pooled_call_allocates_no_more_than_a_bare_generated_call() {
    let server = RefServer::start(Transport::Framed, Protocol::Binary);
    let calls = 1_000;

    let mut channel = TTcpChannel::new();
    channel.open(server.endpoint()).unwrap();
    let (read, write) = channel.split().unwrap();
    let mut bare = CalculatorSyncClient::new(
        TBinaryInputProtocol::new(TFramedReadTransport::new(read), true),
        TBinaryOutputProtocol::new(TFramedWriteTransport::new(write), true),
    );
    let bare_allocations = allocations_during(calls, || assert_eq!(bare.add(1, 2).unwrap(), 3));

    let pooled: ThriftClient<Calc> = ThriftClient::new(
        &server.endpoint(),
        CalculatorSyncClient::new,
        ClientConfig::default(),
    );
    let pooled_allocations = allocations_during(calls, || {
        assert_eq!(pooled.call(|c| c.add(1, 2)).unwrap(), 3)
    });
    let mut direct = pooled.direct();
    let direct_allocations = allocations_during(calls, || assert_eq!(direct.add(1, 2).unwrap(), 3));

    println!(
        "{calls} calls: {pooled_allocations} allocations pooled, {direct_allocations} direct, \
         {bare_allocations} bare"
    );
    assert!(
        pooled_allocations <= bare_allocations,
        "{pooled_allocations} allocations for {calls} pooled calls, {bare_allocations} bare"
    );
    // A direct call makes the generated client's own allocations, not its connection's.
    assert!(
        direct_allocations < bare_allocations,
        "{direct_allocations} allocations for {calls} direct calls, {bare_allocations} bare"
    );
}
