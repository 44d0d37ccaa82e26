//! Serves the reference Calculator service until Ctrl-C or SIGTERM, then stops gracefully:
//! requests already received are answered before the process exits.
//!
//! ```text
//! cargo run --example calculator_server -- --addr 127.0.0.1:9090 --workers 8 \
//!     [--transport framed|buffered] [--protocol binary|compact] [--name LABEL]
//! ```
//!
//! Prints `listening on HOST:PORT` once it accepts connections (bind port 0 to get a free port)
//! and logs to stderr; set `RUST_LOG` (default `info`) for more or less.

#[path = "../idl/service.rs"]
mod service;

use std::io::Write;
use std::process::ExitCode;

use blocking_thrift::{Protocol, ServerConfig, ThriftServer, Transport};
use service::calculator::CalculatorSyncProcessor;
use service::CalculatorService;

struct Args {
    addr: String,
    config: ServerConfig,
    name: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: String::new(),
        config: ServerConfig::default(),
        name: "calculator_server".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?,
            "--workers" => {
                let workers = value()?;
                let workers = workers
                    .parse()
                    .map_err(|_| format!("--workers wants a number, not {workers:?}"))?;
                args.config = args.config.workers(workers);
            }
            "--transport" => args.config = args.config.transport(value()?.parse::<Transport>()?),
            "--protocol" => args.config = args.config.protocol(value()?.parse::<Protocol>()?),
            "--name" => args.name = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.addr.is_empty() {
        return Err("--addr HOST:PORT is required".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{err}");
            eprintln!(
                "usage: calculator_server --addr HOST:PORT [--workers N] \
                 [--transport framed|buffered] [--protocol binary|compact] [--name LABEL]"
            );
            return ExitCode::from(2);
        }
    };

    let processor = CalculatorSyncProcessor::new(CalculatorService::new(args.name));
    let server = match ThriftServer::bind(&args.addr, processor, args.config) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("cannot listen on {}: {err}", args.addr);
            return ExitCode::FAILURE;
        }
    };

    // The handler only signals; stopping happens here, on the main thread.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    if let Err(err) = ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    }) {
        eprintln!("cannot handle Ctrl-C and SIGTERM: {err}");
        return ExitCode::FAILURE;
    }

    if let Err(err) = server.start() {
        eprintln!("cannot start serving: {err}");
        return ExitCode::FAILURE;
    }
    println!("listening on {}", server.local_addr());
    let _ = std::io::stdout().flush();

    let _ = stop_rx.recv();
    server.stop();
    ExitCode::SUCCESS
}
