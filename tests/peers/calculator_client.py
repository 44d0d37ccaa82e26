#!/usr/bin/env python3
"""Calculator client built on Apache Thrift's Python library.

An independent peer for interoperability tests: it calls every method of the Calculator service
(idl/calculator.thrift) on any server, the project's Rust server in particular, and checks every
result against the semantics written in the IDL.

Usage:
    python3 calculator_client.py --addr 127.0.0.1:PORT \
        --transport framed|buffered --protocol binary|compact [--expect-name LABEL]

Prints one `ok <check>` line per passed check and `ALL OK` at the end (exit status 0). On the
first mismatch or error it prints `FAIL <check>: <details>` to stderr and exits with status 1.
"""

import argparse
import os
import random
import sys
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen-py"))

from thrift.Thrift import TApplicationException, TMessageType  # noqa: E402
from thrift.protocol import TBinaryProtocol, TCompactProtocol  # noqa: E402
from thrift.transport import TSocket, TTransport  # noqa: E402

from calculator import Calculator  # noqa: E402
from calculator.ttypes import InvalidOperation, TemporaryUnavailable, UserProfile  # noqa: E402


class CheckFailed(Exception):
    pass


def expect_equal(what, actual, expected):
    if actual != expected:
        raise CheckFailed("%s: expected %r, got %r" % (what, expected, actual))


def short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(%d chars)" % len(text)


def parse_addr(addr):
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise SystemExit("--addr must be HOST:PORT, got %r" % addr)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def call_unknown_method(iprot, oprot, name, seqid):
    """Sends a call to a method the service does not have and returns the reply.

    Written with the protocol directly (the generated client cannot name such a method): an empty
    argument struct, then reads whatever comes back. Returns (name, type, seqid, exception).
    """
    oprot.writeMessageBegin(name, TMessageType.CALL, seqid)
    oprot.writeStructBegin("%s_args" % name)
    oprot.writeFieldStop()
    oprot.writeStructEnd()
    oprot.writeMessageEnd()
    oprot.trans.flush()

    (rname, rtype, rseqid) = iprot.readMessageBegin()
    if rtype != TMessageType.EXCEPTION:
        raise CheckFailed("unknown method: expected an EXCEPTION reply (type %d), got message type %d"
                          % (TMessageType.EXCEPTION, rtype))
    exc = TApplicationException()
    exc.read(iprot)
    iprot.readMessageEnd()
    return rname, rtype, rseqid, exc


def run_checks(client, iprot, oprot, expect_name):
    def ok(label):
        sys.stdout.write("ok %s\n" % label)
        sys.stdout.flush()

    client.ping()
    ok("ping()")

    expect_equal("add(1, 2)", client.add(1, 2), 3)
    ok("add(1, 2) == 3")
    expect_equal("add(-5, 3)", client.add(-5, 3), -2)
    ok("add(-5, 3) == -2")
    expect_equal("add(2147483647, 1)", client.add(2147483647, 1), -2147483648)
    ok("add(2147483647, 1) == -2147483648 (wraps)")
    expect_equal("add(-2147483648, -1)", client.add(-2147483648, -1), 2147483647)
    ok("add(-2147483648, -1) == 2147483647 (wraps)")

    for label, payload in [
        ("empty", b""),
        ("short", b"hello thrift"),
        ("all byte values", bytes(range(256))),
        ("64 KiB", bytes((i * 31 + 7) % 256 for i in range(64 * 1024))),
    ]:
        got = client.echo(payload)
        if got != payload:
            raise CheckFailed("echo(%s): %d bytes sent, got %d bytes back (%s)"
                              % (label, len(payload), len(got) if got is not None else -1,
                                 "differing content" if got is not None and len(got) == len(payload)
                                 else short(got)))
        ok("echo(%s, %d bytes) returns the data" % (label, len(payload)))

    expect_equal("slow(10)", client.slow(10), 10)
    ok("slow(10) == 10")

    expect_equal("retrieve(5)", client.retrieve(5),
                 UserProfile(uid=5, name="Test User", blurb="Thrift is great"))
    ok("retrieve(5) == UserProfile(5, 'Test User', 'Thrift is great')")

    uid = random.randint(100000, 999999999)
    stored = UserProfile(uid=uid, name="Stored User %d" % uid, blurb="stored by calculator_client.py")
    client.store(stored)
    ok("store(UserProfile(%d, ...))" % uid)
    expect_equal("retrieve(%d) after store" % uid, client.retrieve(uid), stored)
    ok("retrieve(%d) returns the stored profile" % uid)

    try:
        got = client.retrieve(-1)
    except InvalidOperation as err:
        expect_equal("InvalidOperation.whatOp from retrieve(-1)", err.whatOp, -1)
        ok("retrieve(-1) raises InvalidOperation(whatOp=-1, why=%r)" % (err.why,))
    else:
        raise CheckFailed("retrieve(-1): expected InvalidOperation, got %s" % short(got))

    name = client.whoami(False)
    if not isinstance(name, str):
        raise CheckFailed("whoami(false): expected a string, got %s" % short(name))
    if expect_name is not None:
        expect_equal("whoami(false)", name, expect_name)
    ok("whoami(false) == %r" % (name,))

    try:
        got = client.whoami(True)
    except TemporaryUnavailable as err:
        ok("whoami(true) raises TemporaryUnavailable(why=%r)" % (err.why,))
    else:
        raise CheckFailed("whoami(true): expected TemporaryUnavailable, got %s" % short(got))

    client.zip()
    ok("zip() (oneway) sent")
    client.ping()
    ok("ping() after zip()")

    seqid = 4242
    rname, _rtype, rseqid, exc = call_unknown_method(iprot, oprot, "no_such_method", seqid)
    expect_equal("TApplicationException.type for unknown method", exc.type,
                 TApplicationException.UNKNOWN_METHOD)
    expect_equal("reply name for unknown method", rname, "no_such_method")
    expect_equal("reply seqid for unknown method", rseqid, seqid)
    ok("no_such_method() raises TApplicationException UNKNOWN_METHOD (%r)" % (exc.message,))

    client.ping()
    ok("ping() on the same connection after the unknown method")
    expect_equal("add(20, 22) after the unknown method", client.add(20, 22), 42)
    ok("add(20, 22) == 42 on the same connection after the unknown method")


def main():
    parser = argparse.ArgumentParser(description="Apache Thrift Python Calculator client")
    parser.add_argument("--addr", required=True, help="HOST:PORT of the server")
    parser.add_argument("--transport", choices=["framed", "buffered"], default="framed")
    parser.add_argument("--protocol", choices=["binary", "compact"], default="binary")
    parser.add_argument("--expect-name", default=None,
                        help="the label whoami(false) must return")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="socket timeout in seconds (default 30)")
    args = parser.parse_args()

    host, port = parse_addr(args.addr)
    socket = TSocket.TSocket(host, port)
    socket.setTimeout(args.timeout * 1000.0)
    if args.transport == "framed":
        transport = TTransport.TFramedTransport(socket)
    else:
        transport = TTransport.TBufferedTransport(socket)
    if args.protocol == "binary":
        protocol = TBinaryProtocol.TBinaryProtocol(transport)
    else:
        protocol = TCompactProtocol.TCompactProtocol(transport)
    client = Calculator.Client(protocol)

    try:
        transport.open()
    except Exception as err:
        sys.stderr.write("FAIL connect to %s (%s/%s): %s\n"
                         % (args.addr, args.transport, args.protocol, err))
        return 1

    try:
        run_checks(client, protocol, protocol, args.expect_name)
    except CheckFailed as err:
        sys.stderr.write("FAIL %s\n" % err)
        return 1
    except Exception as err:
        sys.stderr.write("FAIL unexpected %s: %s\n" % (type(err).__name__, err))
        traceback.print_exc(file=sys.stderr)
        return 1
    finally:
        transport.close()

    sys.stdout.write("ALL OK\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
