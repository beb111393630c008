//! The admin CLI against a running node: `switchyard serve` with a `[management]`
//! section (ephemeral ports), driven through `switchyard volumes`, `remap`, `changes`,
//! `mapping`, `status`, with tokens and without.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "cli-admin-token-0123456789";
const READ: &str = "cli-read-token-0123456789";

fn switchyard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    for v in [
        "SWITCHYARD_TOKEN",
        "SWITCHYARD_NODE",
        "SWITCHYARD_ADMIN_TOKEN",
        "SWITCHYARD_READ_TOKEN",
    ] {
        c.env_remove(v);
    }
    c
}

/// A node process; killed when dropped.
struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("node.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[node]
name = "cli-node"

[[portal]]
listen = "127.0.0.1:0"

[[store]]
id = "a"
path = "a.img"
size = "2MiB"

[[store]]
id = "b"
path = "b.img"
size = "2MiB"

[[target]]
name = "iqn.2026-11.org.switchyard:cli"
[[target.lun]]
lun = 0
volume = "v1"

[management]
listen = "127.0.0.1:0"
admin_token = "{ADMIN}"
read_token = "{READ}"

[mapping]
epoch = 5
[[mapping.volumes]]
name = "v1"
wwn = "naa.600140500000000000000000000000c1"
block_size = 512
blocks = 2048
[[mapping.volumes.extents]]
vstart = 0
blocks = 1024
backend = "a"
bstart = 0
[[mapping.volumes.extents]]
vstart = 1024
blocks = 1024
backend = "a"
bstart = 1024
"#
        ),
    )
    .unwrap();
    // The config holds tokens: owner-only, as the node asks.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn start(dir: &Path) -> Node {
    let mut child = switchyard()
        .args(["serve", "--config"])
        .arg(config(dir))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(u) = line.strip_prefix("management: ") {
                let _ = tx.send(u.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the node printed its management URL");
    Node { child, url }
}

fn run(node: &Node, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = switchyard();
    c.arg("--node").arg(&node.url);
    if let Some(t) = token {
        c.env("SWITCHYARD_TOKEN", t);
    }
    c.args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn volumes_remap_changes_show() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let admin = Some(ADMIN);

    let out = ok(&run(&node, admin, &["status"]));
    assert!(
        out.contains("cli-node") && out.contains("leader    cli-node"),
        "{out}"
    );
    let out = ok(&run(&node, admin, &["volumes"]));
    assert!(out.contains("v1") && out.contains("1.0 MiB"), "{out}");
    let out = ok(&run(&node, admin, &["volumes", "show", "v1"]));
    assert!(
        out.contains("[1024, 2048)") && out.contains("epoch 5"),
        "{out}"
    );
    let out = ok(&run(&node, admin, &["backends"]));
    assert!(out.contains("a") && out.contains("2048/4096"), "{out}");
    let out = ok(&run(&node, admin, &["targets"]));
    assert!(
        out.contains("iqn.2026-11.org.switchyard:cli") && out.contains("volume v1"),
        "{out}"
    );
    let out = ok(&run(&node, admin, &["sessions"]));
    assert!(out.starts_with("NODE"), "{out}");
    let out = ok(&run(&node, admin, &["mapping", "export"]));
    assert!(out.contains("epoch = 5"), "{out}");

    // A remap with a bad extent is refused with every problem, and changes nothing.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[extents]]\nvstart = 0\nblocks = 1024\nbackend = \"a\"\nbstart = 0\n\
         [[extents]]\nvstart = 1000\nblocks = 1048\nbackend = \"nope\"\nbstart = 0\n",
    )
    .unwrap();
    let err = failed(&run(
        &node,
        admin,
        &["remap", "v1", "--extents", bad.to_str().unwrap()],
    ));
    assert!(
        err.contains("overlap") && err.contains("nope") && err.contains("422"),
        "{err}"
    );

    // The read token may not remap.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[extents]]\nvstart = 0\nblocks = 1024\nbackend = \"a\"\nbstart = 0\n\
         [[extents]]\nvstart = 1024\nblocks = 1024\nbackend = \"b\"\nbstart = 512\n",
    )
    .unwrap();
    let err = failed(&run(
        &node,
        Some(READ),
        &["remap", "v1", "--extents", good.to_str().unwrap()],
    ));
    assert!(err.contains("admin") && err.contains("403"), "{err}");

    // The remap itself.
    let out = ok(&run(
        &node,
        admin,
        &["remap", "v1", "--extents", good.to_str().unwrap()],
    ));
    assert!(
        out.contains("done") && out.contains("epoch 5 -> 6"),
        "{out}"
    );
    assert!(out.contains("copied: 1024 of 1024 blocks"), "{out}");
    let out = ok(&run(&node, admin, &["changes"]));
    assert!(
        out.contains("remap") && out.contains("done") && out.contains("1024/1024"),
        "{out}"
    );
    let out = ok(&run(&node, Some(READ), &["changes", "1"]));
    assert!(out.contains("switched") && out.contains("copying"), "{out}");
    let out = ok(&run(&node, Some(READ), &["volumes", "show", "v1"]));
    assert!(
        out.contains("[512, 1536)") && out.contains("epoch 6"),
        "{out}"
    );
    let out = ok(&run(
        &node,
        Some(READ),
        &["volumes", "show", "v1", "--output", "json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["map"][1]["backend"], "b");
    assert_eq!(v["epoch"], 6);
    let out = ok(&run(&node, Some(READ), &["events", "--limit", "100"]));
    assert!(out.contains("change 1") && out.contains("done"), "{out}");

    // Validate: the exported table is valid; a broken one names the problem.
    let table = dir.path().join("table.toml");
    std::fs::write(&table, ok(&run(&node, admin, &["mapping", "export"]))).unwrap();
    let out = ok(&run(
        &node,
        admin,
        &["mapping", "validate", table.to_str().unwrap()],
    ));
    assert!(out.contains("valid"), "{out}");
    let text = std::fs::read_to_string(&table)
        .unwrap()
        .replace("naa.", "naa.zz");
    std::fs::write(&table, text).unwrap();
    let err = failed(&run(
        &node,
        admin,
        &["mapping", "validate", table.to_str().unwrap()],
    ));
    assert!(
        err.contains("not valid") && err.to_lowercase().contains("wwn"),
        "{err}"
    );

    // No token: refused, with advice.
    let err = failed(&run(&node, None, &["volumes"]));
    assert!(
        err.contains("401") && err.contains("SWITCHYARD_TOKEN"),
        "{err}"
    );
    let err = failed(&run(&node, admin, &["volumes", "show", "nope"]));
    assert!(
        err.contains("no volume named") && err.contains("v1"),
        "{err}"
    );
}

#[test]
fn events_follow_streams_a_remap() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let mut follow = switchyard()
        .args([
            "--node", &node.url, "events", "--follow", "--output", "json",
        ])
        .env("SWITCHYARD_TOKEN", READ)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The backlog (node started) arrives first; then the remap's states, live.
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.contains("started"), "{first}");
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"extents": [{"vstart": 0, "blocks": 2048, "backend": "b", "bstart": 0}]}"#,
    )
    .unwrap();
    ok(&run(
        &node,
        Some(ADMIN),
        &["remap", "v1", "--extents", good.to_str().unwrap()],
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut states = Vec::new();
    while Instant::now() < deadline && !states.contains(&"done".to_string()) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) else {
            break;
        };
        let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
        if ev["kind"] == "change" {
            states.push(ev["change"]["state"].as_str().unwrap().to_string());
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(
        states,
        ["staged", "holding", "draining", "copying", "switched", "done"]
    );
}

#[test]
fn unreachable_node_gives_advice() {
    // A port nothing listens on: bind, learn it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = switchyard()
        .args(["--node", &format!("http://127.0.0.1:{port}"), "status"])
        .output()
        .unwrap();
    let err = failed(&o);
    assert!(
        err.contains("cannot reach the node") && err.contains("[management] listen"),
        "{err}"
    );
}

#[test]
fn management_config_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("open.toml");
    std::fs::write(
        &p,
        "[[portal]]\nlisten = \"127.0.0.1:3260\"\n[management]\nlisten = \"0.0.0.0:8080\"\n",
    )
    .unwrap();
    let err = failed(
        &switchyard()
            .args(["check", "--config"])
            .arg(&p)
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("loopback") && err.contains("admin_token"),
        "{err}"
    );
    std::fs::write(
        &p,
        "[[portal]]\nlisten = \"127.0.0.1:3260\"\n[management]\nlisten = \"127.0.0.1:8080\"\nadmin_token = \"short\"\n",
    )
    .unwrap();
    let err = failed(
        &switchyard()
            .args(["check", "--config"])
            .arg(&p)
            .output()
            .unwrap(),
    );
    assert!(err.contains("16 characters"), "{err}");
    std::fs::write(
        &p,
        "[[portal]]\nlisten = \"127.0.0.1:3260\"\n[management]\nlisten = \"127.0.0.1:8080\"\n",
    )
    .unwrap();
    let out = ok(&switchyard()
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap());
    assert!(out.contains("read-only"), "{out}");
}
