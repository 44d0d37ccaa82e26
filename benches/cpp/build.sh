#!/usr/bin/env bash
# Builds Apache Thrift's C++ servers for the reference service, the benchmark's peers:
#   benches/cpp/build.sh OUT_DIR
# Needs g++ and Debian's libthrift-dev (apt-get install -y g++ libthrift-dev libboost-dev libevent-dev); prints
# "SKIPPED: ..." and exits 3 when they are missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT_DIR}
command -v g++ >/dev/null || { echo "SKIPPED: the C++ peers need g++ (apt-get install -y g++)"; exit 3; }
[ -f /usr/include/thrift/server/TThreadPoolServer.h ] && [ -f /usr/include/boost/numeric/conversion/cast.hpp ] && [ -f /usr/include/event.h ] || {
    echo "SKIPPED: the C++ peers need Apache Thrift's C++ library (apt-get install -y libthrift-dev libboost-dev libevent-dev)"; exit 3; }
mkdir -p "$out"
bin="$out/calculator_server_cpp"
if [ "$bin" -nt "$here/calculator_server.cpp" ] && [ "$bin" -nt "$here/gen/Calculator.cpp" ]; then
    exit 0
fi
g++ -O2 -std=c++17 -DNDEBUG -I"$here" -o "$bin" \
    "$here/calculator_server.cpp" "$here/gen/Calculator.cpp" "$here/gen/calculator_types.cpp" \
    -lthriftnb -lthrift -levent -lpthread
