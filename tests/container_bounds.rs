//! A reply's container count must be backed by bytes that arrived, not by a frame header's
//! promise: generated code reserves room for every element a count declares.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use blocking_thrift::{ClientConfig, Error, ThriftClient, Timeout};
use support::calculator::{CalculatorSyncClient, TCalculatorSyncClient};
use support::Calc;

/// Records the largest single allocation while `WATCHING` is set.
struct Largest;

static WATCHING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only reads the requested size.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// Answers the first framed binary request with `reply(seqid)` and then holds the connection.
fn fake_server(reply: fn(i32) -> Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let mut request = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut request).unwrap();
        // Strict binary: version and type, name length, name, sequence id.
        let name_len = u32::from_be_bytes(request[4..8].try_into().unwrap()) as usize;
        let seqid = i32::from_be_bytes(request[8 + name_len..12 + name_len].try_into().unwrap());
        stream.write_all(&reply(seqid)).unwrap();
        // Send nothing more, but keep the connection open until the client gives up.
        let _ = stream.read(&mut [0u8; 1]);
    });
    addr
}

/// A reply to `profiles` whose frame promises a million bytes and whose list claims 900,000
/// structs, with none of them sent.
fn promise_without_bytes(seqid: i32) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(&0x8001_0002u32.to_be_bytes()); // version 1, Reply
    message.extend_from_slice(&8u32.to_be_bytes());
    message.extend_from_slice(b"profiles");
    message.extend_from_slice(&seqid.to_be_bytes());
    message.extend_from_slice(&[15, 0, 0]); // field 0: list
    message.push(12); // of structs
    message.extend_from_slice(&900_000i32.to_be_bytes());
    let mut frame = 1_000_000u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&message);
    frame
}

#[test]
fn a_list_count_backed_by_no_bytes_reserves_nothing() {
    let addr = fake_server(promise_without_bytes);
    let config = ClientConfig::default().read_timeout(Duration::from_millis(300));
    let calc: ThriftClient<Calc> = ThriftClient::new(&addr, CalculatorSyncClient::new, config);
    WATCHING.store(true, Ordering::SeqCst);
    let result = calc.call(|c| c.profiles(1));
    WATCHING.store(false, Ordering::SeqCst);
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(Timeout::Response)),
        "the call should wait for the elements' bytes and time out: {err}"
    );
    let largest = LARGEST.load(Ordering::SeqCst);
    // A million profiles would be tens of megabytes; reading what arrived needs kilobytes.
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");
}
