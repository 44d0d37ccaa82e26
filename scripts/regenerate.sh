#!/usr/bin/env bash
# Regenerates the committed Thrift code for the reference test service.
# Needs the stock Thrift compiler 0.17 (Debian: `apt-get install -y thrift-compiler`).
# Rust (idl/gen/), Python (tests/peers/gen-py/) and C++ (benches/cpp/gen/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
command -v thrift >/dev/null || { echo "thrift compiler not found: apt-get install -y thrift-compiler" >&2; exit 1; }
thrift --gen rs -out "$root/idl/gen" "$root/idl/calculator.thrift"
rm -rf "$root/tests/peers/gen-py"
mkdir -p "$root/tests/peers/gen-py"
thrift --gen py -out "$root/tests/peers/gen-py" "$root/idl/calculator.thrift"
echo "regenerated idl/gen/calculator.rs and tests/peers/gen-py/"
rm -rf "$root/benches/cpp/gen"
mkdir -p "$root/benches/cpp/gen"
thrift --gen cpp -out "$root/benches/cpp/gen" "$root/idl/calculator.thrift"
rm -f "$root/benches/cpp/gen/Calculator_server.skeleton.cpp"
echo "regenerated benches/cpp/gen/ (the C++ benchmark peers)"
