//! A tour of blocking-thrift in one program: it starts a Calculator server on a free port and
//! walks a client through pooled calls, direct method calls, a service exception, a response
//! timeout, and the circuit breaker opening while the server is down and closing once it is
//! back.
//!
//! ```text
//! cargo run --example calculator
//! ```

#[path = "../idl/service.rs"]
mod service;

use std::error::Error as StdError;
use std::thread;
use std::time::{Duration, Instant};

use blocking_thrift::{
    BreakerState, ClientConfig, Error, InputProtocol, OutputProtocol, ServerConfig, ThriftClient,
    ThriftServer,
};
use service::calculator::{
    CalculatorSyncClient, CalculatorSyncProcessor, InvalidOperation, TCalculatorSyncClient,
};
use service::CalculatorService;

/// The generated client over blocking-thrift's pooled connections.
type Calculator = CalculatorSyncClient<InputProtocol, OutputProtocol>;

// Lets `client.direct()` speak the Calculator service.
blocking_thrift::impl_direct!(service::calculator::TCalculatorSyncClientMarker);

fn serve(addr: &str) -> Result<ThriftServer, Box<dyn StdError>> {
    let server = ThriftServer::bind(
        addr,
        CalculatorSyncProcessor::new(CalculatorService::new("demo")),
        ServerConfig::default().workers(4),
    )?;
    server.start()?;
    Ok(server)
}

fn main() -> Result<(), Box<dyn StdError>> {
    let server = serve("127.0.0.1:0")?;
    let addr = server.local_addr().to_string();
    println!("server: serving Calculator on {addr} with 4 workers");

    // Every knob has gevent-thrift's default but reset_timeout, shortened so that
    // the demo takes seconds, not minutes.
    let config = ClientConfig::default().reset_timeout(Duration::from_millis(500));
    let client: ThriftClient<Calculator> =
        ThriftClient::new(&addr, CalculatorSyncClient::new, config);

    // 1. A call through a closure that gets the generated client.
    let sum = client.call(|c| c.add(19, 23))?;
    println!("call:    add(19, 23) = {sum}");

    // 2. The same through direct method calls, as gevent-thrift's wrap_client.
    let mut calc = client.direct();
    let profile = calc.retrieve(7)?;
    println!(
        "direct:  retrieve(7) = {:?} / {:?}",
        profile.name.unwrap_or_default(),
        profile.blurb.unwrap_or_default()
    );

    // 3. Many threads share the pool: no more than pool_size (10) connections.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                (0..100).all(|i| client.call(|c| c.add(t, i)).ok() == Some(t + i))
            })
        })
        .collect();
    let all_right = threads.into_iter().all(|t| t.join().unwrap_or(false));
    println!(
        "pool:    8 threads x 100 calls all right: {all_right}; {} connection(s) open",
        client.stats().connections_open
    );

    // 4. The service's own exception comes back typed.
    match client.call(|c| c.retrieve(-1)) {
        Err(e) => match e.user_exception::<InvalidOperation>() {
            Some(op) => println!(
                "typed:   retrieve(-1) raised InvalidOperation(whatOp = {:?})",
                op.what_op
            ),
            None => return Err(format!("unexpected error: {e}").into()),
        },
        Ok(_) => return Err("retrieve(-1) should fail".into()),
    }

    // 5. A call slower than read_timeout (250 ms) gives up in time; the next call is fine.
    let started = Instant::now();
    match client.call(|c| c.slow(1_000)) {
        Err(e @ Error::Timeout(_)) => {
            println!("timeout: slow(1000): {e} after {:?}", started.elapsed())
        }
        other => return Err(format!("slow(1000) should time out, got {other:?}").into()),
    }
    println!(
        "         and the next call answers for itself: add(1, 1) = {}",
        client.call(|c| c.add(1, 1))?
    );

    // 6. The server goes away. The timeout above was one failure; more than maxfail (3)
    //    within time_unit (60 s) open the breaker, and calls then fail at once without
    //    touching the network.
    server.stop();
    println!("server:  stopped");
    while client.breaker_state() == BreakerState::Closed {
        if let Err(e) = client.call(|c| c.ping()) {
            println!("breaker: ping() failed: {e}");
        }
    }
    println!("breaker: now {:?}", client.breaker_state());
    let started = Instant::now();
    let rejected = client.call(|c| c.ping());
    println!(
        "breaker: ping() rejected in {:?}: {}",
        started.elapsed(),
        rejected.err().map(|e| e.to_string()).unwrap_or_default()
    );

    // 7. The server comes back on the same port; after reset_timeout one probe goes through
    //    and its success closes the breaker.
    let server = serve(&addr)?;
    println!("server:  back on {addr}");
    thread::sleep(Duration::from_millis(600));
    let sum = client.call(|c| c.add(2, 2))?;
    println!(
        "breaker: probe add(2, 2) = {sum}; breaker {:?}",
        client.breaker_state()
    );
    if client.breaker_state() != BreakerState::Closed {
        return Err("the breaker should have closed".into());
    }

    let stats = client.stats();
    println!(
        "stats:   {} calls, {} ok, {} service exceptions, {} failures, {} rejected",
        stats.calls, stats.successes, stats.user_exceptions, stats.failures, stats.rejected
    );
    client.close();
    server.stop();
    println!("done");
    Ok(())
}
