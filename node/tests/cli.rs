//! The `switchyard` CLI: example configs validate as they are; bad configs fail with a
//! message that names the problem.

use std::process::Command;

fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

fn etc(name: &str) -> String {
    format!("{}/../etc/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn example_configs_check_ok() {
    for f in [
        "quickstart.toml",
        "secure.toml",
        "multipath.toml",
        "array.toml",
        "virtual.toml",
    ] {
        let out = switchyard()
            .args(["check", "--config", &etc(f)])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("config OK"), "{stdout}");
    }
    let out = switchyard()
        .args(["check", "--config", &etc("quickstart.toml")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("iqn.2026-11.org.switchyard:quickstart lun 0"),
        "{stdout}"
    );
}

#[test]
fn bad_config_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[portal]]\nlisten = \"127.0.0.1:3260\"\n[[target]]\nname = \"iqn.2026-13.bad:x\"\n",
    )
    .unwrap();
    let out = switchyard()
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("target name"), "{err}");
    let out = switchyard()
        .args(["check", "--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
}

#[test]
fn lu_size_not_multiple_of_block_size_is_refused_at_serve() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("odd.img"), vec![0u8; 1000]).unwrap();
    let p = dir.path().join("n.toml");
    std::fs::write(
        &p,
        "[[portal]]\nlisten = \"127.0.0.1:1\"\n[[target]]\nname = \"iqn.2026-11.org.switchyard:t\"\n\
         [[target.lun]]\nlun = 0\npath = \"odd.img\"\n",
    )
    .unwrap();
    let out = switchyard()
        .args(["serve", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a positive multiple"), "{err}");
}
