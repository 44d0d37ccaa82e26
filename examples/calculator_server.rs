//! Serves the reference Calculator service until Ctrl-C or SIGTERM, then stops gracefully:
//! requests already received are answered before the process exits.
//!
//! ```text
//! cargo run --example calculator_server -- --addr 127.0.0.1:9090 --workers 8 \
//!     [--transport framed|buffered] [--protocol binary|compact] [--name LABEL] \
//!     [--zookeeper HOSTS --service NAME [--advertise HOST] [--session-timeout SECS]]
//! ```
//!
//! Prints `listening on HOST:PORT` once it accepts connections (bind port 0 to get a free port)
//! and logs to stderr; set `RUST_LOG` (default `info`) for more or less.
//!
//! With `--zookeeper`, it registers itself as an instance of `--service` (at `--advertise`, or
//! the address it is bound to), with a 10 s session unless `--session-timeout` says otherwise,
//! and on Ctrl-C or SIGTERM leaves the fleet a second before it stops.

#[path = "../idl/service.rs"]
mod service;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use blocking_thrift::discovery::{Announcement, ZooKeeper, ZooKeeperConfig};
use blocking_thrift::{Protocol, ServerConfig, ThriftServer, Transport};
use service::calculator::CalculatorSyncProcessor;
use service::CalculatorService;

struct Args {
    addr: String,
    config: ServerConfig,
    name: String,
    zookeeper: Option<String>,
    service: Option<String>,
    advertise: Option<String>,
    session_timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: String::new(),
        config: ServerConfig::default(),
        name: "calculator_server".to_owned(),
        zookeeper: None,
        service: None,
        advertise: None,
        session_timeout: Duration::from_secs(10),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?,
            "--workers" => {
                let workers = value()?;
                let max = ServerConfig::MAX_WORKERS;
                let workers = workers
                    .parse()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| format!("--workers wants 1 to {max}, not {workers:?}"))?;
                args.config = args.config.workers(workers);
            }
            "--transport" => args.config = args.config.transport(value()?.parse::<Transport>()?),
            "--protocol" => args.config = args.config.protocol(value()?.parse::<Protocol>()?),
            "--name" => args.name = value()?,
            "--zookeeper" => args.zookeeper = Some(value()?),
            "--service" => args.service = Some(value()?),
            "--advertise" => args.advertise = Some(value()?),
            "--session-timeout" => {
                let secs = value()?;
                let secs: f64 = secs
                    .parse()
                    .map_err(|_| format!("--session-timeout wants seconds, not {secs:?}"))?;
                args.session_timeout = Duration::from_secs_f64(secs);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.addr.is_empty() {
        return Err("--addr HOST:PORT is required".into());
    }
    if args.zookeeper.is_some() != args.service.is_some() {
        return Err("--zookeeper and --service go together".into());
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
                 [--transport framed|buffered] [--protocol binary|compact] [--name LABEL] \
                 [--zookeeper HOSTS --service NAME [--advertise HOST] [--session-timeout SECS]]"
            );
            return ExitCode::from(2);
        }
    };

    let processor = CalculatorSyncProcessor::new(CalculatorService::new(args.name));
    let server = match ThriftServer::bind(&args.addr, processor, args.config) {
        Ok(server) => server,
        Err(err) => {
            // A bind error names the address itself; a lookup error does not.
            if err.to_string().contains(args.addr.as_str()) {
                eprintln!("{err}");
            } else {
                eprintln!("cannot listen on {}: {err}", args.addr);
            }
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

    let fleet = match (&args.zookeeper, &args.service) {
        (Some(hosts), Some(service)) => {
            let config = ZooKeeperConfig::default().session_timeout(args.session_timeout);
            let joined = ZooKeeper::connect(hosts, config).and_then(|zk| {
                let announcement =
                    Announcement::register(&zk, &server, service, args.advertise.as_deref())?;
                Ok((zk, announcement))
            });
            match joined {
                Ok((zk, announcement)) => {
                    println!("registered {}", announcement.registration().path());
                    let _ = std::io::stdout().flush();
                    Some((zk, announcement))
                }
                Err(err) => {
                    eprintln!("cannot join the fleet of {service} on {hosts}: {err}");
                    server.stop();
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };

    let _ = stop_rx.recv();
    match fleet {
        // Leaves first, so that clients stop choosing this server before it stops.
        Some((zk, announcement)) => {
            announcement.leave_and_stop(&server, Duration::from_secs(1));
            zk.close();
        }
        None => server.stop(),
    }
    ExitCode::SUCCESS
}
