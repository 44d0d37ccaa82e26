#!/usr/bin/env python3
"""Calculator server built on Apache Thrift's Python library.

An independent peer for interoperability tests: the project's Rust clients call this server,
which implements the semantics written in idl/calculator.thrift.

Usage:
    python3 calculator_server.py --host 127.0.0.1 --port 0 \
        --transport framed|buffered --protocol binary|compact --name LABEL

Once the socket is listening, exactly one line `LISTENING <port>` is printed to stdout (and
flushed); with --port 0 that is the port the operating system picked. Nothing else is written to
stdout; diagnostics go to stderr. SIGTERM and SIGINT stop the server with exit status 0.
"""

import argparse
import logging
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen-py"))

from thrift.protocol import TBinaryProtocol, TCompactProtocol  # noqa: E402
from thrift.server import TServer  # noqa: E402
from thrift.transport import TSocket, TTransport  # noqa: E402

from calculator import Calculator  # noqa: E402
from calculator.ttypes import InvalidOperation, TemporaryUnavailable, UserProfile  # noqa: E402


def wrap_i32(value):
    """Wraps an integer into the signed 32-bit range, like two's-complement addition."""
    return ((value + 2**31) % 2**32) - 2**31


class CalculatorHandler(object):
    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.stored = {}
        self.zip_count = 0

    def ping(self):
        pass

    def add(self, num1, num2):
        return wrap_i32(num1 + num2)

    def echo(self, data):
        return data

    def slow(self, millis):
        time.sleep(max(millis, 0) / 1000.0)
        return millis

    def retrieve(self, uid):
        if uid < 0:
            raise InvalidOperation(whatOp=uid, why="uid must not be negative")
        with self.lock:
            stored = self.stored.get(uid)
        if stored is not None:
            return stored
        return UserProfile(uid=uid, name="Test User", blurb="Thrift is great")

    def store(self, user):
        if user is None or user.uid is None:
            return
        with self.lock:
            self.stored[user.uid] = user

    def whoami(self, fail):
        if fail:
            raise TemporaryUnavailable(why="%s asked to fail" % self.name)
        return self.name

    def zip(self):
        with self.lock:
            self.zip_count += 1

    def profiles(self, count):
        if count < 0:
            raise InvalidOperation(whatOp=count, why="count must not be negative")
        return [self.retrieve(uid) for uid in range(count)]


class PreboundServerSocket(TSocket.TServerSocket):
    """A server socket that may be put into listening state before serve() is called.

    TThreadedServer.serve() calls listen() itself; listening early lets us learn the port
    (needed for --port 0) and report it before the accept loop starts.
    """

    def listen(self):
        if self.handle is None:
            super(PreboundServerSocket, self).listen()

    def bound_port(self):
        return self.handle.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description="Apache Thrift Python Calculator server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--transport", choices=["framed", "buffered"], default="framed")
    parser.add_argument("--protocol", choices=["binary", "compact"], default="binary")
    parser.add_argument("--name", default="python-server",
                        help="label returned by whoami(false)")
    args = parser.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="calculator_server[%(levelname)s] %(message)s")

    handler = CalculatorHandler(args.name)
    processor = Calculator.Processor(handler)

    if args.transport == "framed":
        transport_factory = TTransport.TFramedTransportFactory()
    else:
        transport_factory = TTransport.TBufferedTransportFactory()
    if args.protocol == "binary":
        protocol_factory = TBinaryProtocol.TBinaryProtocolFactory()
    else:
        protocol_factory = TCompactProtocol.TCompactProtocolFactory()

    server_socket = PreboundServerSocket(host=args.host, port=args.port)
    server = TServer.TThreadedServer(processor, server_socket, transport_factory,
                                     protocol_factory, daemon=True)

    def stop(signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    try:
        server_socket.listen()
        sys.stdout.write("LISTENING %d\n" % server_socket.bound_port())
        sys.stdout.flush()
        server.serve()
    except SystemExit:
        pass
    finally:
        server_socket.close()
        sys.stderr.write("calculator_server %s: stopped after %d zip call(s)\n"
                         % (args.name, handler.zip_count))
        sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
