//! The gRPC check against a grpcio server (gRPC's C-core HTTP/2 stack, PyPI grpcio from
//! tests/requirements.txt), driven by tests/grpcio_health.py: SERVING passes, NOT_SERVING
//! and a real trailers-only UNAVAILABLE fail after the threshold.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use pachgate_health::{spawn, CheckKind, CheckSpec, Transport};
use tokio::sync::mpsc;

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    address: SocketAddr,
}

impl Peer {
    fn start() -> Peer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpcio_health.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let address = line
            .trim()
            .strip_prefix("grpcio-health listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Peer {
            child,
            stdin,
            stdout,
            address,
        }
    }

    /// Sends a command and waits for its acknowledgement.
    fn tell(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("ok {command}"));
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn next(changes: &mut mpsc::UnboundedReceiver<(bool, String)>) -> (bool, String) {
    tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("a change within 10 s")
        .expect("the checker is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_health_server_is_checked_as_pachd_is() {
    let mut peer = Peer::start();
    let (tx, mut changes) = mpsc::unbounded_channel();
    let checker = spawn(
        peer.address,
        "localhost".into(),
        Transport::Plain,
        CheckSpec {
            kind: CheckKind::Grpc {
                service: String::new(),
            },
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        },
        move |healthy, reason| {
            let _ = tx.send((healthy, reason.to_string()));
        },
    );
    let state = checker.state();
    assert_eq!(next(&mut changes).await, (true, "status SERVING".into()));
    peer.tell("status 2");
    assert_eq!(
        next(&mut changes).await,
        (false, "status NOT_SERVING".into())
    );
    peer.tell("status 1");
    assert_eq!(next(&mut changes).await, (true, "status SERVING".into()));
    peer.tell("abort 14");
    assert_eq!(
        next(&mut changes).await,
        (false, "grpc-status 14 UNAVAILABLE".into())
    );
    assert!(!state.is_healthy());
}
