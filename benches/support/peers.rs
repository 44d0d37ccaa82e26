//! The servers and connections the benchmark compares: raw framed bytes over plain sockets
//! (the floor), the `thrift` crate's own `TServer` and client (stock), and this crate's.

use std::io::{self, Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blocking_thrift::{ClientConfig, ServerConfig, ThriftClient, ThriftServer};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryInputProtocolFactory, TBinaryOutputProtocol,
    TBinaryOutputProtocolFactory,
};
use thrift::server::{TProcessor, TServer};
use thrift::transport::{
    ReadHalf, TFramedReadTransport, TFramedReadTransportFactory, TFramedWriteTransport,
    TFramedWriteTransportFactory, TIoChannel, TTcpChannel, WriteHalf,
};

use crate::service::calculator::{
    CalculatorSyncClient, CalculatorSyncProcessor, TCalculatorSyncClient,
};
use crate::service::CalculatorService;

/// Worker threads of both servers, whatever the number of clients: a server is sized for its
/// host, not for the callers it will meet. The stock server holds a worker per connection, so
/// with more clients than this it starves some of them.
pub(crate) const SERVER_WORKERS: usize = 16;

/// Longer than any call takes here, even 64 clients on a busy machine, so nothing times out.
const GENEROUS: Duration = Duration::from_secs(5);

/// What each call sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Payload {
    /// `add(1, 2)`: two integers each way.
    Add,
    /// `echo` of 1 KiB.
    Echo1K,
    /// `echo` of 64 KiB.
    Echo64K,
}

impl Payload {
    pub(crate) const ALL: [Payload; 3] = [Payload::Add, Payload::Echo1K, Payload::Echo64K];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Payload::Add => "add",
            Payload::Echo1K => "echo-1k",
            Payload::Echo64K => "echo-64k",
        }
    }

    /// The bytes `echo` sends; empty for `add`.
    pub(crate) fn data(self) -> Vec<u8> {
        let len = match self {
            Payload::Add => 0,
            Payload::Echo1K => 1024,
            Payload::Echo64K => 64 * 1024,
        };
        (0..len).map(|i| i as u8).collect()
    }

    /// One call through any generated client; checks the answer so a broken peer cannot pass
    /// for a fast one.
    pub(crate) fn call<C: TCalculatorSyncClient>(
        self,
        c: &mut C,
        data: &[u8],
    ) -> thrift::Result<()> {
        let ok = match self {
            Payload::Add => c.add(1, 2)? == 3,
            Payload::Echo1K | Payload::Echo64K => c.echo(data.to_vec())?.len() == data.len(),
        };
        if ok {
            Ok(())
        } else {
            Err(thrift::Error::from(io::Error::other("wrong answer")))
        }
    }
}

/// A `Write` whose bytes can be taken out afterwards.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn framed(message: Vec<u8>) -> Vec<u8> {
    let mut frame = (message.len() as u32).to_be_bytes().to_vec();
    frame.extend(message);
    frame
}

/// The framed-binary request of one call of `payload` and the server's response to it,
/// exactly as the generated client and processor write them.
pub(crate) fn wire_bytes(payload: Payload) -> (Vec<u8>, Vec<u8>) {
    let sent = Capture::default();
    let mut client = CalculatorSyncClient::new(
        TBinaryInputProtocol::new(io::empty(), true),
        TBinaryOutputProtocol::new(sent.clone(), true),
    );
    // Reading the answer fails: there is none. The request is what is wanted.
    let _ = payload.call(&mut client, &payload.data());
    let request = sent.take();
    let answer = Capture::default();
    CalculatorSyncProcessor::new(CalculatorService::new("floor"))
        .process(
            &mut TBinaryInputProtocol::new(Cursor::new(request.clone()), true),
            &mut TBinaryOutputProtocol::new(answer.clone(), true),
        )
        .expect("the processor answers its own client's request");
    (framed(request), framed(answer.take()))
}

/// Reads one whole frame into `buf` with as few `read`s as the socket allows, relying on the
/// peer sending nothing more until it is answered. Returns the frame's length, header included.
pub(crate) fn read_frame(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    loop {
        if got >= 4 {
            let need = 4 + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if need > buf.len() {
                return Err(io::Error::other("frame larger than the buffer"));
            }
            if got >= need {
                return Ok(need);
            }
        }
        match stream.read(&mut buf[got..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
}

/// Room for the largest frame of the sweep.
pub(crate) const FRAME_BUFFER: usize = 128 * 1024;

/// The floor: a thread per connection that reads a frame and writes back the prepared
/// response, no Thrift at all. Runs until the process ends.
///
/// With `copies`, it copies as a server running generated code must: the request's payload
/// into a new vector (the handler's owned argument), the response into the frame it sends.
pub(crate) fn start_floor(response: Vec<u8>, copies: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let response = Arc::new(response);
    std::thread::Builder::new()
        .name("floor-acceptor".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let response = response.clone();
                std::thread::Builder::new()
                    .name("floor-server".into())
                    .spawn(move || {
                        let mut buf = vec![0; FRAME_BUFFER];
                        let mut encoded = Vec::new();
                        while let Ok(len) = read_frame(&mut stream, &mut buf) {
                            let sent = if copies {
                                let decoded = std::hint::black_box(buf[..len].to_vec());
                                encoded.clear();
                                encoded.extend_from_slice(&response);
                                drop(decoded);
                                stream.write_all(&encoded)
                            } else {
                                stream.write_all(&response)
                            };
                            if sent.is_err() {
                                break;
                            }
                        }
                    })
                    .expect("spawn a floor connection thread");
            }
        })
        .expect("spawn the floor acceptor");
    addr
}

/// The `thrift` crate's own threaded server, framed binary, with `workers` workers.
///
/// `TServer` has no way to stop and only binds an address itself, so it runs on a thread
/// that is left behind (the benchmark ends with `process::exit`) on a port found free just
/// before; a lost race for that port is retried on another.
pub(crate) fn start_stock_with(workers: usize) -> SocketAddr {
    for _ in 0..20 {
        let addr = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            probe.local_addr().unwrap()
        };
        let (failed_tx, failed_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("stock-acceptor".into())
            .spawn(move || {
                let mut server = TServer::new(
                    TFramedReadTransportFactory::new(),
                    TBinaryInputProtocolFactory::new(),
                    TFramedWriteTransportFactory::new(),
                    TBinaryOutputProtocolFactory::new(),
                    CalculatorSyncProcessor::new(CalculatorService::new("stock")),
                    workers,
                );
                let err = server.listen(addr);
                let _ = failed_tx.send(err);
            })
            .expect("spawn the stock server");
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if failed_rx.try_recv().is_ok() {
                break;
            }
            // The probe connection takes a worker only until it closes here.
            if TcpStream::connect(addr).is_ok() {
                return addr;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    panic!("the stock thrift server did not start");
}

/// This crate's server, default settings but for `workers` workers and an idle timeout longer
/// than the benchmark, so held idle connections stay open throughout.
pub(crate) fn start_ours_with(name: &str, workers: usize) -> ThriftServer {
    let config = ServerConfig::default()
        .workers(workers)
        .idle_timeout(Duration::from_secs(3600));
    let processor = CalculatorSyncProcessor::new(Arc::new(CalculatorService::new(name)));
    let server = ThriftServer::bind("127.0.0.1:0", processor, config).expect("bind loopback");
    server.start().expect("start our server");
    server
}

/// The generated client over this crate's pooled connections.
pub(crate) type OurCalc =
    CalculatorSyncClient<blocking_thrift::InputProtocol, blocking_thrift::OutputProtocol>;

/// This crate's client, pool and breaker on, default settings but for a pool as large as the
/// number of calling threads and timeouts generous enough that no call times out under load.
pub(crate) fn our_client(addr: SocketAddr, threads: usize) -> ThriftClient<OurCalc> {
    let config = ClientConfig::default()
        .pool_size(threads as u32)
        .connect_timeout(GENEROUS)
        .pool_timeout(GENEROUS)
        .read_timeout(GENEROUS);
    ThriftClient::new(&addr.to_string(), CalculatorSyncClient::new, config)
}

/// The `thrift` crate's plain client: one `TTcpChannel` with framed transports and the binary
/// protocol under the generated client.
pub(crate) type StockCalc = CalculatorSyncClient<
    TBinaryInputProtocol<TFramedReadTransport<ReadHalf<TTcpChannel>>>,
    TBinaryOutputProtocol<TFramedWriteTransport<WriteHalf<TTcpChannel>>>,
>;

/// Opens a stock client connection (`TTcpChannel::open` sets no-delay, as here). Also returns
/// a handle on the socket, so that a call stuck on a starved connection can be woken.
pub(crate) fn stock_client(addr: SocketAddr) -> io::Result<(StockCalc, TcpStream)> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let handle = stream.try_clone()?;
    let (read, write) = TTcpChannel::with_stream(stream)
        .split()
        .map_err(io::Error::other)?;
    let client = CalculatorSyncClient::new(
        TBinaryInputProtocol::new(TFramedReadTransport::new(read), true),
        TBinaryOutputProtocol::new(TFramedWriteTransport::new(write), true),
    );
    Ok((client, handle))
}
