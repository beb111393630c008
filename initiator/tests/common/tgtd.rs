//! Debian's tgtd (package `tgt`) on private ports, for tests that need a real
//! third-party target. Shared by the initiator tests and the integration tests.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::ports::free_port;

/// A tgtd on private ports with one file-backed LU (LUN 1), killed on drop.
pub struct Tgtd {
    pub addr: SocketAddr,
    pub iqn: String,
    control_port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// tgtd refuses control ports of 32768 and above; pick one per test from the
/// process id and a counter (23999 is the benchmark's).
fn control_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let p = 24000 + (u64::from(std::process::id()) % 800) * 10 + n % 10;
    p as u16
}

impl Tgtd {
    /// Starts tgtd with a sparse backing file of `size` bytes. `chap`: (user, secret)
    /// for incoming CHAP; `mutual`: (user, secret) for outgoing (mutual) CHAP.
    pub fn start(size: u64, chap: Option<(&str, &str)>, mutual: Option<(&str, &str)>) -> Tgtd {
        if Command::new("tgtd")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            panic!("tgtd not found: install tgt (`apt-get install -y tgt`); these tests need a real third-party target");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lu.img");
        std::fs::File::create(&file).unwrap().set_len(size).unwrap();
        let port = free_port();
        let control_port = control_port();
        let iqn = format!("iqn.2026-11.org.switchyard.test:tgtd-{port}");
        let child = Command::new("tgtd")
            .args(["-f", "--control-port", &control_port.to_string()])
            .args(["--iscsi", &format!("portal=127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tgtd");
        let t = Tgtd {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            iqn: iqn.clone(),
            control_port,
            child,
            _dir: dir,
        };
        // Wait for the control socket.
        let mut ok = false;
        for _ in 0..100 {
            if t.adm(&["--op", "show", "--mode", "target"], false) {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(ok, "tgtd did not come up");
        t.adm(
            &["--op", "new", "--mode", "target", "--tid", "1", "-T", &iqn],
            true,
        );
        t.adm(
            &[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                "1",
                "-b",
                file.to_str().unwrap(),
            ],
            true,
        );
        t.adm(
            &[
                "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
            ],
            true,
        );
        if let Some((u, p)) = chap {
            t.account(u, p, false);
        }
        if let Some((u, p)) = mutual {
            t.account(u, p, true);
        }
        // The portal listens once tgtd is up; make sure it accepts.
        for _ in 0..100 {
            if std::net::TcpStream::connect(t.addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    /// Create CHAP account `user`/`password` and bind it to target 1: for incoming CHAP,
    /// or as the target's own (mutual CHAP) with `outgoing`.
    fn account(&self, user: &str, password: &str, outgoing: bool) {
        self.adm(
            &[
                "--op",
                "new",
                "--mode",
                "account",
                "--user",
                user,
                "--password",
                password,
            ],
            true,
        );
        let mut bind = vec![
            "--op", "bind", "--mode", "account", "--tid", "1", "--user", user,
        ];
        if outgoing {
            bind.push("--outgoing");
        }
        self.adm(&bind, true);
    }

    /// Runs tgtadm against this tgtd; `must` panics on failure.
    pub fn adm(&self, args: &[&str], must: bool) -> bool {
        let out = Command::new("tgtadm")
            .args([
                "--lld",
                "iscsi",
                "--control-port",
                &self.control_port.to_string(),
            ])
            .args(args)
            .output()
            .expect("run tgtadm");
        if must && !out.status.success() {
            panic!(
                "tgtadm {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        // SIGKILL: tgtd ignores SIGTERM while targets exist.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
