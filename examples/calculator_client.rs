//! Calls every method of the reference Calculator service on any server and checks each
//! answer; exits non-zero on the first mismatch.
//!
//! ```text
//! cargo run --example calculator_client -- --addr 127.0.0.1:9090 [--transport framed|buffered] [--protocol binary|compact]
//! ```

#[path = "../idl/service.rs"]
mod service;

use std::process::ExitCode;
use std::time::Duration;

use blocking_thrift::{
    ClientConfig, Error, InputProtocol, OutputProtocol, Protocol, ThriftClient, Transport,
};
use service::calculator::{
    CalculatorSyncClient, InvalidOperation, TCalculatorSyncClient, TemporaryUnavailable,
    UserProfile,
};

type Calc = CalculatorSyncClient<InputProtocol, OutputProtocol>;

blocking_thrift::impl_direct!(service::calculator::TCalculatorSyncClientMarker);

struct Args {
    addr: String,
    transport: Transport,
    protocol: Protocol,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: String::new(),
        transport: Transport::Framed,
        protocol: Protocol::Binary,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?,
            "--transport" => args.transport = value()?.parse()?,
            "--protocol" => args.protocol = value()?.parse()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.addr.is_empty() {
        return Err("--addr HOST:PORT is required".into());
    }
    Ok(args)
}

/// Compares an answer with what it should be, printing the outcome.
fn check<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: Result<T, Error>,
    want: T,
) -> Result<(), String> {
    match got {
        Ok(v) if v == want => {
            println!("ok   {what} = {v:?}");
            Ok(())
        }
        Ok(v) => Err(format!("{what}: expected {want:?}, got {v:?}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn run(args: Args) -> Result<(), String> {
    let config = ClientConfig::default()
        .transport(args.transport)
        .protocol(args.protocol)
        .read_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1));
    let client: ThriftClient<Calc> =
        ThriftClient::new(&args.addr, CalculatorSyncClient::new, config);

    check("ping()", client.call(|c| c.ping()), ())?;
    check("add(1, 2)", client.call(|c| c.add(1, 2)), 3)?;
    check(
        "add(i32::MAX, 1)",
        client.call(|c| c.add(i32::MAX, 1)),
        i32::MIN,
    )?;
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    check(
        "echo(64 KiB)",
        client.call(|c| c.echo(payload.clone())),
        payload,
    )?;
    check("slow(10)", client.call(|c| c.slow(10)), 10)?;
    let default = UserProfile::new(5, "Test User".to_owned(), "Thrift is great".to_owned());
    check("retrieve(5)", client.call(|c| c.retrieve(5)), default)?;
    let uid = 1_000 + std::process::id() as i32 % 100_000;
    let mine = UserProfile::new(uid, "Ada".to_owned(), "stored".to_owned());
    check("store(profile)", client.call(|c| c.store(mine.clone())), ())?;
    check("retrieve(stored)", client.call(|c| c.retrieve(uid)), mine)?;
    match client.call(|c| c.retrieve(-1)) {
        Err(e)
            if e.user_exception::<InvalidOperation>()
                .is_some_and(|op| op.what_op == Some(-1)) =>
        {
            println!("ok   retrieve(-1) raised {e}")
        }
        other => {
            return Err(format!(
                "retrieve(-1): expected InvalidOperation, got {other:?}"
            ))
        }
    }
    let name = client
        .call(|c| c.whoami(false))
        .map_err(|e| format!("whoami(false): {e}"))?;
    println!("ok   whoami(false) = {name:?}");
    match client.call(|c| c.whoami(true)) {
        Err(e) if e.user_exception::<TemporaryUnavailable>().is_some() => {
            println!("ok   whoami(true) raised {e}")
        }
        other => {
            return Err(format!(
                "whoami(true): expected TemporaryUnavailable, got {other:?}"
            ))
        }
    }
    check("zip() (oneway)", client.call(|c| c.zip()), ())?;

    // The same service through direct method calls.
    let mut direct = client.direct();
    check(
        "direct add(40, 2)",
        direct.add(40, 2).map_err(Error::from),
        42,
    )?;
    check("direct ping()", direct.ping().map_err(Error::from), ())?;

    let stats = client.stats();
    println!(
        "all checks passed: {} calls, {} connection(s) opened",
        stats.calls, stats.connections_open
    );
    client.close();
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FAIL {e}");
            ExitCode::FAILURE
        }
    }
}
