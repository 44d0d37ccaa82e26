#!/usr/bin/env bash
# A local, standalone ZooKeeper for trying service discovery: Debian's `zookeeper` package
# (apt-get install zookeeper default-jre-headless), listening on 127.0.0.1 only.
#
#   scripts/zookeeper.sh start [PORT]   # default 2181; data in ${ZK_DIR:-/tmp/blocking-thrift-zookeeper}
#   scripts/zookeeper.sh stop
set -euo pipefail

dir=${ZK_DIR:-/tmp/blocking-thrift-zookeeper}
port=${2:-2181}
jar=/usr/share/java/zookeeper.jar

case "${1:-}" in
start)
    [ -f "$jar" ] || { echo "ZooKeeper is not installed: apt-get install zookeeper default-jre-headless" >&2; exit 1; }
    mkdir -p "$dir/data"
    cat > "$dir/zoo.cfg" <<CFG
tickTime=2000
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok
maxClientCnxns=0
CFG
    nohup java -Xmx128m -cp "$jar:/usr/share/java/slf4j-simple.jar" \
        org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg" > "$dir/zookeeper.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf srvr >&3 && grep -q standalone <&3) 2>/dev/null; then
            echo "ZooKeeper serves on 127.0.0.1:$port (log: $dir/zookeeper.log)"
            exit 0
        fi
        sleep 0.2
    done
    echo "ZooKeeper did not start; see $dir/zookeeper.log" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/pid" ]; then
        kill "$(cat "$dir/pid")" 2>/dev/null || true
        rm -f "$dir/pid"
    fi
    ;;
*)
    echo "usage: $0 start [PORT] | stop" >&2
    exit 2
    ;;
esac
