//! Bytes a client might send, through a running server's request path: socket, framing,
//! decoders, the reference service's generated processor and its handler.
//!
//! The first byte picks the wire format (bit 0: buffered instead of framed, bit 1: compact
//! instead of binary); the rest is sent as is, then the client's side is shut, so every read
//! after the input meets the end of the stream. The servers run with the default, production
//! limits.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use blocking_thrift::{Protocol, ServerConfig, ThriftServer, Transport};
use libfuzzer_sys::fuzz_target;

#[path = "../../idl/service.rs"]
mod service;

use service::calculator::CalculatorSyncProcessor;
use service::CalculatorService;

fn servers() -> &'static [ThriftServer] {
    static SERVERS: OnceLock<Vec<ThriftServer>> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let mut servers = Vec::new();
        for protocol in [Protocol::Binary, Protocol::Compact] {
            for transport in [Transport::Framed, Transport::Buffered] {
                let config = ServerConfig::default()
                    .workers(2)
                    .transport(transport)
                    .protocol(protocol);
                let processor =
                    CalculatorSyncProcessor::new(CalculatorService::new("fuzz").never_sleeping());
                let server = ThriftServer::bind("127.0.0.1:0", processor, config).unwrap();
                server.start().unwrap();
                servers.push(server);
            }
        }
        servers
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, request)) = data.split_first() else {
        return;
    };
    let server = &servers()[usize::from(pick & 3)];
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may answer, or close the connection, before it has read everything.
    let _ = stream.write_all(request);
    let _ = stream.shutdown(Shutdown::Write);
    let mut responses = Vec::new();
    if let Err(err) = stream.read_to_end(&mut responses) {
        assert!(
            !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "the server neither answered nor closed the connection"
        );
    }
});
