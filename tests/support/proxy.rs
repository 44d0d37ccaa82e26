//! A TCP proxy on 127.0.0.1 that forwards requests to a server untouched and injects faults into
//! the responses, switchable while it runs.
//!
//! Once a fault hits a connection, that connection forwards nothing more in either direction,
//! and any request bytes the client still sends on it are counted: a client that never reuses a
//! connection after a fault leaves that count at zero.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy does to the next response chunk it reads from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward it.
    Pass,
    /// Wait this long, then forward it.
    Delay(Duration),
    /// Forward nothing more on this connection, and keep it open.
    Stall,
    /// Forward the first half, then reset the connection (SO_LINGER 0, then close).
    Reset,
    /// Forward at most this many bytes, then close the connection cleanly.
    CloseAfter(usize),
    /// Forward the chunk with every byte after the first four (a frame header) flipped, and keep
    /// the connection open.
    Garbage,
}

impl Fault {
    /// Whether the connection cannot be trusted any more once this was applied to a chunk of
    /// `len` bytes. Closing after a whole chunk is not a fault: it is what a server closing a
    /// connection after its response looks like.
    fn is_fault(self, len: usize) -> bool {
        match self {
            Fault::Pass | Fault::Delay(_) => false,
            Fault::CloseAfter(limit) => limit < len,
            Fault::Stall | Fault::Reset | Fault::Garbage => true,
        }
    }
}

/// The fault-injecting proxy; stops and joins its threads on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    accepted: AtomicUsize,
    faulted: AtomicUsize,
    reused_after_fault: AtomicUsize,
    stopping: AtomicBool,
    /// Every connection, to unblock its pumps when stopping; weak, so that a connection's
    /// sockets close as soon as its pumps are done with them.
    conns: Mutex<Vec<Weak<Conn>>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

/// One proxied connection, shared by its two pump threads.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    faulted: AtomicBool,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream`, passing everything.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::Pass),
            accepted: AtomicUsize::new(0),
            faulted: AtomicUsize::new(0),
            reused_after_fault: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            pumps: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(&shared, &listener))
        };
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Applies `fault` to every response chunk read from now on.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// Client connections accepted since start.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections a fault was injected on.
    pub fn faulted_connections(&self) -> usize {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// Reads of request bytes on connections that had already seen a fault.
    pub fn requests_after_fault(&self) -> usize {
        self.shared.reused_after_fault.load(Ordering::SeqCst)
    }

    /// Stops accepting, closes every connection and joins every thread.
    pub fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        acceptor.join().unwrap();
        for conn in self.shared.conns.lock().unwrap().drain(..) {
            if let Some(conn) = conn.upgrade() {
                let _ = conn.client.shutdown(Shutdown::Both);
                let _ = conn.server.shutdown(Shutdown::Both);
            }
        }
        let pumps: Vec<_> = self.shared.pumps.lock().unwrap().drain(..).collect();
        for pump in pumps {
            pump.join().unwrap();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(shared.upstream) else {
            // The server is down: the client sees its connection closed.
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let conn = Arc::new(Conn {
            client,
            server,
            faulted: AtomicBool::new(false),
        });
        {
            let mut conns = shared.conns.lock().unwrap();
            conns.retain(|c| c.strong_count() > 0);
            conns.push(Arc::downgrade(&conn));
        }
        let requests = {
            let (shared, conn) = (shared.clone(), conn.clone());
            std::thread::spawn(move || pump_requests(&shared, &conn))
        };
        let responses = {
            let shared = shared.clone();
            std::thread::spawn(move || pump_responses(&shared, conn))
        };
        shared.pumps.lock().unwrap().extend([requests, responses]);
    }
}

/// Client to server, untouched, until the client closes; after a fault nothing is forwarded.
fn pump_requests(shared: &Shared, conn: &Conn) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match (&conn.client).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if conn.faulted.load(Ordering::SeqCst) {
            shared.reused_after_fault.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        if (&conn.server).write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = conn.server.shutdown(Shutdown::Write);
}

/// Server to client, each chunk through the fault in force when it arrives.
fn pump_responses(shared: &Shared, conn: Arc<Conn>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match (&conn.server).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let fault = *shared.fault.lock().unwrap();
        if fault.is_fault(n) {
            conn.faulted.store(true, Ordering::SeqCst);
            shared.faulted.fetch_add(1, Ordering::SeqCst);
        }
        let chunk = &mut buf[..n];
        let mut client = &conn.client;
        match fault {
            Fault::Pass => {}
            Fault::Delay(delay) => std::thread::sleep(delay),
            Fault::Stall => {
                // The client hears nothing more; the server's side is let go.
                let _ = conn.server.shutdown(Shutdown::Both);
                return;
            }
            Fault::Reset => {
                let _ = client.write_all(&chunk[..n / 2]);
                let _ = socket2::SockRef::from(&conn.client).set_linger(Some(Duration::ZERO));
                let _ = conn.server.shutdown(Shutdown::Both);
                // Wakes the request pump, which then lets go of the connection; whichever
                // pump drops it last closes the client socket, and with SO_LINGER 0 that close
                // is a reset.
                let _ = conn.client.shutdown(Shutdown::Read);
                return;
            }
            Fault::CloseAfter(limit) => {
                let _ = client.write_all(&chunk[..n.min(limit)]);
                let _ = conn.client.shutdown(Shutdown::Both);
                let _ = conn.server.shutdown(Shutdown::Both);
                return;
            }
            Fault::Garbage => {
                for byte in chunk.iter_mut().skip(4) {
                    *byte ^= 0xa5;
                }
                let _ = client.write_all(chunk);
                // Nothing more is forwarded; the client has to notice the garbage itself.
                let _ = conn.server.shutdown(Shutdown::Both);
                return;
            }
        }
        if client.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = conn.client.shutdown(Shutdown::Write);
}
