//! Ports for servers that tests start as separate processes (switchyard nodes, tgtd).
//!
//! Binding port 0 and releasing it is not enough: the kernel may hand the same port out
//! again, to this process or to an outgoing connection's source port, before the child
//! binds it (a cluster member once replicated to itself that way). So ports come from
//! below the kernel's ephemeral range, are never handed out twice by one process, and
//! are checked free when chosen.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// Ports handed out are drawn from here: below Linux's ephemeral range (32768-60999),
/// so no outgoing connection takes one before its server binds it, and below the
/// benchmark's fixed ports (23260 and up).
const RANGE: std::ops::Range<u16> = 10000..23000;

/// A TCP port on 127.0.0.1 that nothing listens on and that this process has not
/// handed out before.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        // std's hasher keys are random per process: a random pick without a crate.
        let pick = RandomState::new().hash_one(std::process::id());
        let port = RANGE.start + (pick % u64::from(RANGE.end - RANGE.start)) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {RANGE:?}");
}
