//! A private `redis-server` for one test, on a free loopback port, with its
//! own directory, killed on drop. Standard library only: `net/tests` includes
//! this file by path.
//!
//! The tests install nothing. `.ci/run` installs `redis-server` when it is
//! missing; under `CI=true` a missing binary fails the test instead of
//! skipping it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// A Redis Cluster node (`--cluster-enabled yes`).
    cluster: bool,
}

/// The `redis-server` binary, if this machine has one.
fn binary() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")]);
    candidates
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

impl RedisServer {
    /// Starts one, or returns `None` (with a note) where Redis is not
    /// installed and this is not CI.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_as(false)
    }

    fn start_as(cluster: bool) -> Option<RedisServer> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var("CI").is_err(),
                "redis-server is not installed (CI=true: .ci/run should have installed it)"
            );
            eprintln!("SKIPPED: redis-server is not installed");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!(
            "roomhub-redis-{}-{port}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = RedisServer {
            port,
            dir,
            child: None,
            cluster,
        };
        server.spawn(&bin);
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Every write is fsynced before Redis answers (`appendfsync always`),
    /// so what a node acked survives a Redis crash.
    fn spawn(&mut self, bin: &PathBuf) {
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(if self.cluster {
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ][..]
            } else {
                &[]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn ping(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// Sends one inline command (`SCRIPT FLUSH`) and returns the first
    /// line of the reply (`+OK`).
    pub fn command(&self, line: &str) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("redis up");
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        s.write_all(format!("{line}\r\n").as_bytes())
            .expect("command sent");
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// SIGKILL: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same port with nothing on disk:
    /// a Redis that lost its data.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("redis dir");
        self.spawn(&binary().expect("redis-server"));
    }

    /// Starts it again on the same port and directory (after [`kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(&binary().expect("redis-server"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas), each a [`RedisServer`]
/// with cluster mode on, joined by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `None` where Redis is not installed and this is not CI.
    pub fn start() -> Option<RedisCluster> {
        let nodes = (0..3)
            .map(|_| RedisServer::start_as(true))
            .collect::<Option<Vec<_>>>()?;
        let cli = binary().expect("redis-server").with_file_name("redis-cli");
        let status = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(cluster)
    }

    /// Every node says the cluster is ok.
    fn is_ok(&self) -> bool {
        self.nodes.iter().all(|n| {
            let addr = SocketAddr::from(([127, 0, 0, 1], n.port));
            let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 4096];
            s.write_all(b"CLUSTER INFO\r\n").is_ok()
                && s.read(&mut buf).is_ok_and(|len| {
                    String::from_utf8_lossy(&buf[..len]).contains("cluster_state:ok")
                })
        })
    }

    /// Seed URLs, comma-separated: what `--redis-cluster` is given.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}
