//! Real backing services on loopback for tests: an S3 server (moto's server mode) and `redis-server`. Each is a
//! child process of the test, on a free port, stopped by its own PID when dropped. When a service's binary is
//! missing the test is skipped with a line saying so, except under CI (`CI` set), where that is a failure.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within 30 s");
}

/// Whether `program` can be run; if not, skips (returns false) or, under CI, fails.
pub fn available(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{program} is required under CI");
        eprintln!("SKIP: {program} is not installed");
    }
    found
}

/// moto's S3 server.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    pub fn start() -> Option<S3Server> {
        if !available("moto_server") {
            return None;
        }
        let port = free_port();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        wait_for_port(port, &mut child, "moto_server");
        Some(S3Server { child, port })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto takes unsigned requests). Retried: a moto that just opened its port can still answer
    /// an error while it loads (seen under a loaded CI machine); creating a bucket again is harmless.
    pub fn create_bucket(&self, name: &str) {
        let out = Command::new("curl")
            .args(["-sS", "-f", "--retry", "5", "--retry-all-errors", "--retry-delay", "1"])
            .args(["-X", "PUT", &format!("{}/{name}", self.endpoint())])
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "create bucket {name}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// OpenDAL's options for `bucket` on this server (`[storage.options]`): no ambient AWS config read, no
    /// instance-metadata address asked.
    pub fn options(&self, bucket: &str) -> Vec<(String, String)> {
        [
            ("bucket", bucket.to_owned()),
            ("endpoint", self.endpoint()),
            ("region", "us-east-1".to_owned()),
            ("access_key_id", "test".to_owned()),
            ("secret_access_key", "test".to_owned()),
            ("disable_config_load", "true".to_owned()),
            ("disable_ec2_metadata", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The `[storage]` section of a wharf config for `bucket` on this server. OpenDAL reads no ambient AWS config
    /// and never asks an instance-metadata address.
    pub fn storage_toml(&self, bucket: &str, extra: &str) -> String {
        format!(
            "[storage]\nbackend = \"s3\"\n{extra}\n[storage.options]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n\
             disable_config_load = \"true\"\ndisable_ec2_metadata = \"true\"\n",
            self.endpoint()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` without persistence.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> Option<RedisServer> {
        if !available("redis-server") {
            return None;
        }
        Some(Self::start_on(free_port()))
    }

    pub fn start_on(port: u16) -> RedisServer {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        wait_for_port(port, &mut child, "redis-server");
        RedisServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops it (SIGKILL: a crash, not a shutdown).
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` as `dir/name` and returns its path as a string for `--config`.
pub fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}
