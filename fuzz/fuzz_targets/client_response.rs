//! Bytes a server might send, through the client's response path: the generated client of the
//! reference service calls each method in turn over a real connection whose server sent these
//! bytes, read by the client's reader and the crate's decoders. The same bytes also go through
//! the decoders alone, read as a message of any shape and skipped.
//!
//! The first byte picks the wire format (bit 0: buffered instead of framed, bit 1: compact
//! instead of binary). The client runs with the default, production limits.
#![no_main]

use blocking_thrift::{__fuzz, Protocol, Transport};
use libfuzzer_sys::fuzz_target;

#[path = "../../idl/service.rs"]
mod service;

use service::calculator::{CalculatorSyncClient, TCalculatorSyncClient, UserProfile};

const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, response)) = data.split_first() else {
        return;
    };
    let transport = if pick & 1 == 0 {
        Transport::Framed
    } else {
        Transport::Buffered
    };
    let protocol = if pick & 2 == 0 {
        Protocol::Binary
    } else {
        Protocol::Compact
    };
    let _ = __fuzz::read_message(protocol, response);
    let _ = __fuzz::skip_message(protocol, response);
    __fuzz::with_client(
        transport,
        protocol,
        MAX_MESSAGE_SIZE,
        response,
        |input, output| {
            let mut client = CalculatorSyncClient::new(input, output);
            let _ = client.ping();
            let _ = client.add(1, 2);
            let _ = client.echo(vec![1, 2, 3]);
            let _ = client.slow(0);
            let _ = client.retrieve(7);
            let _ = client.store(UserProfile::new(1, "a".to_owned(), "b".to_owned()));
            let _ = client.whoami(false);
            let _ = client.zip();
        },
    )
    .unwrap();
});
