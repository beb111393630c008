//! Security audit against the `switchyard` binary (rules 1, 2, 6 and 7):
//!
//! - a config file holding secrets (CHAP, management tokens, the cluster secret, or a
//!   cluster `secret_file`) that group or others can read draws a warning; one that
//!   only its owner can read, or that holds no secret, does not;
//! - the node refuses a mutual CHAP secret equal to the initiator's, and its config
//!   errors do not echo secrets;
//! - the management API refuses requests without a valid token (401) and every
//!   changing request made with the read token (403);
//! - at RUST_LOG=trace, through CHAP logins right and wrong and API calls with every
//!   token, the node's log never holds a CHAP secret or a management token.
//!
//! Needs the binary: `cargo build -p switchyard` first (as the other node tests).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration_tests::*;
use mgmt::client::Client;

const SECRET: &str = "Ns4-initiator-s";
const TSECRET: &str = "Ns5-target-secr";
const ADMIN: &str = "admin-token-Xr81-0123456789";
const READ: &str = "read-token-Yq27-0123456789";
const CLUSTER_SECRET: &str = "cluster-secret-Wm55-0123456789";
const NODE_TARGET: &str = "iqn.2026-11.org.switchyard:secnode";

fn base(dir: &Path, port: u16) -> String {
    format!(
        "[node]\nname = \"secnode\"\ndata_dir = \"{}\"\n\
         [[portal]]\nlisten = \"127.0.0.1:{port}\"\n\
         [[target]]\nname = \"{NODE_TARGET}\"\n\
         [[target.lun]]\nlun = 0\npath = \"lun0.img\"\nsize = \"4MiB\"\n",
        dir.display()
    )
}

fn chap_section(mutual_secret: &str) -> String {
    format!(
        "[target.chap]\nusername = \"host1\"\nsecret = \"{SECRET}\"\n\
         mutual_username = \"switchyard\"\nmutual_secret = \"{mutual_secret}\"\n"
    )
}

/// `base` with the CHAP section inside the target (before its LUN).
fn with_chap(dir: &Path, port: u16, mutual_secret: &str) -> String {
    base(dir, port).replace(
        "[[target.lun]]",
        &format!("{}[[target.lun]]", chap_section(mutual_secret)),
    )
}

fn management(port: u16) -> String {
    format!(
        "[management]\nlisten = \"127.0.0.1:{port}\"\nadmin_token = \"{ADMIN}\"\nread_token = \"{READ}\"\n"
    )
}

fn cluster(secret_line: &str) -> String {
    format!(
        "[cluster]\nid = 1\nname = \"sy1\"\nlisten = \"127.0.0.1:{}\"\n{secret_line}\ndata_dir = \"raft\"\n",
        free_port()
    )
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `switchyard check --config PATH`: (success, stdout + stderr).
fn check(path: &Path) -> (bool, String) {
    let o = Command::new(switchyard_bin())
        .args(["check", "--config"])
        .arg(path)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

const WARNING: &str = "readable by others";

#[test]
fn config_holding_secrets_readable_by_group_or_others_warns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret_file = d.join("cluster.secret");
    let configs: Vec<(&str, String, bool)> = vec![
        ("chap", with_chap(d, free_port(), TSECRET), true),
        (
            "tokens",
            format!("{}{}", base(d, free_port()), management(free_port())),
            true,
        ),
        (
            "cluster secret",
            format!(
                "{}{}",
                base(d, free_port()),
                cluster(&format!("secret = \"{CLUSTER_SECRET}\""))
            ),
            true,
        ),
        ("no secret", base(d, free_port()), false),
    ];
    for (what, text, holds_secret) in configs {
        let cfg = d.join("node.toml");
        for mode in [0o644, 0o640, 0o604, 0o600, 0o400] {
            write(&cfg, &text, mode);
            let (ok, out) = check(&cfg);
            assert!(ok, "{what} {mode:o}: the config is valid:\n{out}");
            let readable = mode & 0o077 != 0;
            assert_eq!(
                out.contains(WARNING),
                holds_secret && readable,
                "{what}, mode {mode:o}:\n{out}"
            );
        }
    }
    // A cluster secret kept in its own file: that file's mode counts.
    let cfg = d.join("node.toml");
    let text = format!(
        "{}{}",
        base(d, free_port()),
        cluster(&format!("secret_file = \"{}\"", secret_file.display()))
    );
    write(&cfg, &text, 0o644);
    for (mode, warns) in [(0o644, true), (0o640, true), (0o600, false)] {
        write(&secret_file, CLUSTER_SECRET, mode);
        let (ok, out) = check(&cfg);
        assert!(ok, "{out}");
        assert_eq!(
            out.contains(WARNING),
            warns,
            "secret_file mode {mode:o}:\n{out}"
        );
        assert!(!out.contains(CLUSTER_SECRET), "{out}");
    }
}

#[test]
fn node_refuses_a_mutual_secret_equal_to_the_initiators_and_does_not_echo_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    write(&cfg, &with_chap(dir.path(), free_port(), SECRET), 0o600);
    let (ok, out) = check(&cfg);
    assert!(!ok, "refused:\n{out}");
    assert!(out.contains("must differ"), "{out}");
    assert!(!out.contains(SECRET), "the error echoes the secret:\n{out}");
    // Other CHAP warnings do not echo it either: a secret of the wrong length.
    let short = with_chap(dir.path(), free_port(), TSECRET).replace(SECRET, "Ns4-short");
    write(&cfg, &short, 0o600);
    let (_, out) = check(&cfg);
    assert!(out.contains("12-16"), "{out}");
    assert!(!out.contains("Ns4-short"), "{out}");
    // The valid config passes, and `check` does not print secrets or tokens.
    let good = format!(
        "{}{}",
        with_chap(dir.path(), free_port(), TSECRET),
        management(free_port())
    );
    write(&cfg, &good, 0o600);
    let (ok, out) = check(&cfg);
    assert!(ok, "{out}");
    for s in [SECRET, TSECRET, ADMIN, READ] {
        assert!(!out.contains(s), "`check` prints {s}:\n{out}");
    }
}

fn status_of(r: Result<u16, mgmt::client::ClientError>) -> u16 {
    match r {
        Ok(s) => s,
        Err(e) => e.status().unwrap_or_else(|| panic!("no HTTP status: {e}")),
    }
}

fn post(c: &Client, path: &str) -> u16 {
    status_of(
        c.post::<_, serde_json::Value>(path, &serde_json::json!({}))
            .map(|(s, _)| s),
    )
}

/// Every request that changes the node (mgmt/src/server.rs), with a body that may or
/// may not parse: the role is checked first. Each on a fresh client (no pooled
/// connection the server may have closed after a request whose body it did not read).
fn changes(url: &str, token: Option<&str>) -> Vec<(&'static str, u16)> {
    let c = || Client::new(url, token.map(str::to_string));
    vec![
        (
            "POST nodes/x/state",
            post(&c(), "/api/v1/nodes/secnode/state"),
        ),
        (
            "DELETE nodes/x",
            status_of(c().delete("/api/v1/nodes/other-node")),
        ),
        ("POST faults", post(&c(), "/api/v1/faults")),
        ("POST remap", post(&c(), "/api/v1/volumes/v1/remap")),
        ("POST migrate", post(&c(), "/api/v1/volumes/v1/migrate")),
        (
            "POST migration abort",
            post(&c(), "/api/v1/migrations/1/abort"),
        ),
        (
            "POST migration pause",
            post(&c(), "/api/v1/migrations/1/pause"),
        ),
        ("POST volumes", post(&c(), "/api/v1/volumes")),
        ("DELETE volume", status_of(c().delete("/api/v1/volumes/v1"))),
        ("POST exports", post(&c(), "/api/v1/volumes/v1/exports")),
        (
            "DELETE export",
            status_of(c().delete("/api/v1/volumes/v1/exports/iqn.2026-11.org.x:t/0")),
        ),
        ("POST backends", post(&c(), "/api/v1/backends")),
        (
            "DELETE backend",
            status_of(c().delete("/api/v1/backends/b")),
        ),
        (
            "PUT zoning",
            status_of(
                c().put::<_, serde_json::Value>("/api/v1/zoning", &serde_json::json!({}))
                    .map(|_| 200),
            ),
        ),
    ]
}

async fn wait_http(url: &str) {
    let c = Client::new(url, Some(READ.into()));
    for _ in 0..400 {
        if c.get_text("/api/v1/status").is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("management API at {url} never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_needs_tokens_and_the_log_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mport) = (free_port(), free_port());
    let cfg: PathBuf = dir.path().join("node.toml");
    let log = dir.path().join("node.log");
    write(
        &cfg,
        &format!(
            "{}{}",
            with_chap(dir.path(), port, TSECRET),
            management(mport)
        ),
        0o600,
    );
    let node = NodeProcess::spawn_with_env(&cfg, Some(&log), &[("RUST_LOG", "trace")]);
    wait_port(port).await;
    let url = format!("http://127.0.0.1:{mport}");
    wait_http(&url).await;

    // iSCSI: mutual CHAP right, wrong initiator secret, wrong expected target secret.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let opts = |s: &str, t: &str, who: &str| LoginOpts {
        initiator: Some(format!("iqn.2026-11.org.example:{who}")),
        target: Some(NODE_TARGET.into()),
        chap: Some(("host1".into(), s.into())),
        mutual: Some(("switchyard".into(), t.into())),
        ..Default::default()
    };
    let mut i = Initiator::connect(addr).await;
    i.login(&opts(SECRET, TSECRET, "ok"))
        .await
        .expect("mutual CHAP");
    i.clear_ua(0).await;
    assert_eq!(i.read10(0, 0, 1, 512).await.status, 0);
    for n in 0..3 {
        let mut i = Initiator::connect(addr).await;
        let e = i
            .login(&opts("Ns6-wrong-guess", TSECRET, &format!("bad{n}")))
            .await
            .unwrap_err();
        assert_eq!((e.class, e.detail), (2, 1));
    }
    let mut i = Initiator::connect(addr).await;
    assert!(i.login(&opts(SECRET, "Ns7-not-target", "m")).await.is_err());

    // Management API: nothing without a valid token.
    let read = Client::new(&url, Some(READ.into()));
    const WRONG_TOKEN: &str = "wrong-token-0123456789abcd";
    for token in [None, Some(WRONG_TOKEN)] {
        let c = Client::new(&url, token.map(str::to_string));
        assert_eq!(status_of(c.get_text("/api/v1/status").map(|_| 200)), 401);
        assert_eq!(status_of(c.get_text("/api/v1/sessions").map(|_| 200)), 401);
        assert_eq!(status_of(c.get_text("/metrics").map(|_| 200)), 401);
        for (what, s) in changes(&url, token) {
            assert_eq!(s, 401, "{what} without a valid token");
        }
    }
    // The read token reads, and changes nothing.
    let before = read.get::<serde_json::Value>("/api/v1/status").unwrap();
    for (what, s) in changes(&url, Some(READ)) {
        assert_eq!(s, 403, "{what} with the read token");
    }
    let after = read.get::<serde_json::Value>("/api/v1/status").unwrap();
    assert_eq!(before.get("epoch"), after.get("epoch"));
    assert_eq!(before.get("nodes"), after.get("nodes"));
    // The admin token gets past the role check (the requests fail on their content).
    for (what, s) in changes(&url, Some(ADMIN)) {
        assert!(s != 401 && s != 403, "{what} with the admin token: {s}");
    }

    node.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("login authentication failed") && text.contains("DEBUG"),
        "the verbose log was captured:\n{}",
        &text[..text.len().min(4000)]
    );
    for s in [SECRET, TSECRET, ADMIN, READ, "Ns6-wrong-guess"] {
        assert!(
            !text.contains(s),
            "the node log holds {s}:\n{}",
            text.lines()
                .filter(|l| l.contains(s))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn config_parse_errors_do_not_quote_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    let good = with_chap(dir.path(), free_port(), TSECRET);
    let broken = [
        // A typo in the key name, trailing junk, a secret of the wrong type.
        good.replace("\nsecret =", "\nsecert ="),
        good.replace(&format!("\"{SECRET}\""), &format!("\"{SECRET}\" junk")),
        good.replace(&format!("\"{TSECRET}\""), &format!("'{TSECRET}' 1")),
    ];
    let mut leaked = Vec::new();
    for (n, text) in broken.iter().enumerate() {
        write(&cfg, text, 0o600);
        let (ok, out) = check(&cfg);
        assert!(!ok, "case {n} is refused:\n{out}");
        if out.contains(SECRET) || out.contains(TSECRET) {
            leaked.push(out);
        }
    }
    assert!(
        leaked.is_empty(),
        "config errors quote secrets:\n{}",
        leaked.join("\n")
    );
}
