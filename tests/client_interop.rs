//! The client against Apache Thrift's own Python server, in every wire format.

mod support;

use std::process::Command;
use std::time::Duration;

use blocking_thrift::{ClientConfig, Error, ThriftClient};
use support::calculator::{
    CalculatorSyncClient, InvalidOperation, TCalculatorSyncClient, TemporaryUnavailable,
    UserProfile,
};
use support::{Calc, PythonServer, ALL_WIRE_FORMATS};

blocking_thrift::impl_direct!(support::calculator::TCalculatorSyncClientMarker);

#[test]
fn every_wire_format_against_the_python_server() {
    if !support::python_peer_available("every_wire_format_against_the_python_server") {
        return;
    }
    for (transport, protocol) in ALL_WIRE_FORMATS {
        let label = format!("{transport:?}-{protocol:?}");
        let server = PythonServer::start(transport, protocol, &label);
        let config = ClientConfig::default()
            .transport(transport)
            .protocol(protocol)
            .read_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2));
        let calc: ThriftClient<Calc> =
            ThriftClient::new(&server.addr, CalculatorSyncClient::new, config);
        assert_eq!(calc.call(|c| c.add(2, 3)).unwrap(), 5, "{label}");
        assert_eq!(
            calc.call(|c| c.add(i32::MAX, 1)).unwrap(),
            i32::MIN,
            "{label}"
        );
        let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(
            calc.call(|c| c.echo(payload.clone())).unwrap(),
            payload,
            "{label}"
        );
        let profile = UserProfile::new(77, "Grace".to_owned(), "compiler".to_owned());
        calc.call(|c| c.store(profile.clone())).unwrap();
        assert_eq!(calc.call(|c| c.retrieve(77)).unwrap(), profile, "{label}");
        let err = calc.call(|c| c.retrieve(-4)).unwrap_err();
        assert_eq!(
            err.user_exception::<InvalidOperation>().unwrap().what_op,
            Some(-4),
            "{label}"
        );
        let err = calc.call(|c| c.whoami(true)).unwrap_err();
        assert!(
            err.user_exception::<TemporaryUnavailable>().is_some(),
            "{label}: {err}"
        );
        assert_eq!(calc.call(|c| c.whoami(false)).unwrap(), label);
        calc.call(|c| c.zip()).unwrap();
        let mut direct = calc.direct();
        assert_eq!(direct.add(20, 22).unwrap(), 42, "{label}");
        assert!(matches!(
            Error::from(direct.retrieve(-1).unwrap_err()),
            Error::User(_)
        ));
        assert_eq!(direct.slow(5).unwrap(), 5, "{label}");
        let stats = calc.stats();
        assert_eq!(stats.failures, 0, "{label}: {stats:?}");
        assert_eq!(
            stats.connections_open, 1,
            "{label}: one connection serves every call"
        );
    }
}

#[test]
fn the_example_client_passes_against_the_python_server() {
    if !support::python_peer_available("the_example_client_passes_against_the_python_server") {
        return;
    }
    for (transport, protocol) in ALL_WIRE_FORMATS {
        let server = PythonServer::start(transport, protocol, "py");
        let out = Command::new(support::example("calculator_client"))
            .args(["--addr", &server.addr])
            .args(support::wire_args(transport, protocol))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{transport:?}/{protocol:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_reply_holding_a_container_from_the_python_server() {
    if !support::python_peer_available("a_reply_holding_a_container_from_the_python_server") {
        return;
    }
    for (transport, protocol) in ALL_WIRE_FORMATS {
        let server = PythonServer::start(transport, protocol, "py");
        let config = ClientConfig::default()
            .transport(transport)
            .protocol(protocol)
            .read_timeout(Duration::from_secs(5));
        let calc: ThriftClient<Calc> =
            ThriftClient::new(&server.addr, CalculatorSyncClient::new, config);
        let profiles = calc.call(|c| c.profiles(300)).unwrap();
        assert_eq!(profiles.len(), 300);
        assert!(profiles
            .iter()
            .enumerate()
            .all(|(i, p)| p.uid == Some(i as i32)));
        let err = calc.call(|c| c.profiles(-2)).unwrap_err();
        assert!(err.user_exception::<InvalidOperation>().is_some(), "{err}");
    }
}
