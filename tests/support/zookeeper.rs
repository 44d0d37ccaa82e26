//! A real ZooKeeper (Debian's `zookeeper` package) run standalone on a loopback port for a
//! test, and Apache Curator's service discovery as a peer (`tests/peers/CuratorPeer.java`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const CURATOR_JAR: &str = "/usr/share/java/curator-x-discovery.jar";

/// The jars Curator's discovery needs, all from Debian's packages.
const CURATOR_CLASSPATH: &[&str] = &[
    "curator-x-discovery",
    "curator-framework",
    "curator-client",
    "guava",
    "jackson-databind",
    "jackson-core",
    "jackson-annotations",
    "zookeeper",
    "zookeeper-jute",
    "slf4j-api",
    "slf4j-nop",
];

/// Whether `java` and ZooKeeper's jar are there. When not, the caller should skip, loudly,
/// unless `BLOCKING_THRIFT_REQUIRE_ZOOKEEPER=1` makes them mandatory.
pub fn zookeeper_available(test: &str) -> bool {
    let java = Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let ok = java && Path::new(ZOOKEEPER_JAR).exists();
    if !ok {
        if std::env::var("BLOCKING_THRIFT_REQUIRE_ZOOKEEPER").as_deref() == Ok("1") {
            panic!(
                "{test}: ZooKeeper is required (apt-get install zookeeper default-jre-headless)"
            );
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: {test}: ZooKeeper is not installed \
             (apt-get install zookeeper default-jre-headless) ***\n"
        );
    }
    ok
}

/// Whether Curator's discovery and `javac` are there, as [`zookeeper_available`] for
/// ZooKeeper.
pub fn curator_available(test: &str) -> bool {
    let javac = Command::new("javac")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let ok = javac && Path::new(CURATOR_JAR).exists() && zookeeper_available(test);
    if !ok {
        if std::env::var("BLOCKING_THRIFT_REQUIRE_ZOOKEEPER").as_deref() == Ok("1") {
            panic!("{test}: Curator is required (apt-get install libcurator-discovery-java default-jdk-headless)");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: {test}: Apache Curator is not installed \
             (apt-get install libcurator-discovery-java default-jdk-headless) ***\n"
        );
    }
    ok
}

/// A standalone ZooKeeper on a loopback port, with a data directory of its own that survives
/// [`restart`](Self::restart); killed when dropped.
pub struct ZkServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ZkServer {
    /// Starts a server and waits until it serves. Sessions may be as short as 1 s.
    pub fn start() -> ZkServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("blocking-thrift-zk-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(
            dir.join("zoo.cfg"),
            format!(
                "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=srvr,ruok\n\
                 minSessionTimeout=1000\nmaxSessionTimeout=20000\nmaxClientCnxns=0\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let mut server = ZkServer {
            port,
            dir,
            child: None,
        };
        server.run();
        server
    }

    /// `127.0.0.1:<port>`.
    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.join("zookeeper.log")).unwrap();
        let child = Command::new("java")
            .args([
                "-Xmx96m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Dzookeeper.admin.enableServer=false",
                "-cp",
                &format!("{ZOOKEEPER_JAR}:/usr/share/java/slf4j-simple.jar"),
                "org.apache.zookeeper.server.ZooKeeperServerMain",
            ])
            .arg(self.dir.join("zoo.cfg"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ZooKeeper");
        self.child = Some(child);
        let started = Instant::now();
        while !self.serving() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "ZooKeeper did not start; see {}",
                self.dir.join("zookeeper.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server answers `srvr` as a serving standalone server.
    pub fn serving(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"srvr").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("Mode: standalone")
    }

    /// Kills the server; its data directory stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data, so that sessions shorter-lived than
    /// the outage come back.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Freezes the server (SIGSTOP) without closing its sockets, or thaws it (SIGCONT): a
    /// session whose timeout passes meanwhile expires when the server thaws.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        // A frozen server dies of SIGKILL too.
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs ZooKeeper's own command-line client with `args` against `hosts`.
pub fn zk_cli(hosts: &str, args: &[&str]) {
    let status = Command::new("java")
        .args([
            "-cp",
            &format!("{ZOOKEEPER_JAR}:/usr/share/java/slf4j-nop.jar"),
            "org.apache.zookeeper.ZooKeeperMain",
            "-server",
            hosts,
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run zkCli");
    assert!(status.success(), "zkCli {args:?} failed");
}

/// The class path of the Curator peer, compiled once per test binary.
fn curator_peer_classpath() -> &'static str {
    static CLASSPATH: OnceLock<String> = OnceLock::new();
    CLASSPATH.get_or_init(|| {
        let jars: Vec<String> = CURATOR_CLASSPATH
            .iter()
            .map(|jar| format!("/usr/share/java/{jar}.jar"))
            .collect();
        let jars = jars.join(":");
        let classes = std::env::temp_dir().join(format!(
            "blocking-thrift-curator-peer-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&classes).unwrap();
        let source = format!(
            "{}/tests/peers/CuratorPeer.java",
            env!("CARGO_MANIFEST_DIR")
        );
        let status = Command::new("javac")
            .args(["-cp", &jars, "-d"])
            .arg(&classes)
            .arg(source)
            .status()
            .expect("run javac");
        assert!(status.success(), "the Curator peer does not compile");
        format!("{}:{jars}", classes.display())
    })
}

/// Instances of `name` under `base`, as Curator's `queryForInstances` sees them: each one's
/// JSON, as Curator writes it.
pub fn curator_query(hosts: &str, base: &str, name: &str) -> Vec<String> {
    let output = Command::new("java")
        .args([
            "-cp",
            curator_peer_classpath(),
            "CuratorPeer",
            "query",
            hosts,
            base,
            name,
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run the Curator peer");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.pop().as_deref(), Some("done"), "{text}");
    lines.sort();
    lines
}

/// An instance registered through Curator, kept until dropped.
pub struct CuratorRegistration {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl CuratorRegistration {
    pub fn register(
        hosts: &str,
        base: &str,
        name: &str,
        id: &str,
        address: &str,
        port: u16,
    ) -> CuratorRegistration {
        let mut child = Command::new("java")
            .args([
                "-cp",
                curator_peer_classpath(),
                "CuratorPeer",
                "register",
                hosts,
                base,
            ])
            .args([name, id, address, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the Curator peer");
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "registered");
        CuratorRegistration { child, stdin }
    }

    /// Unregisters through Curator and waits for the peer to exit.
    pub fn close(mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

impl Drop for CuratorRegistration {
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
