//! What a session proposes and how it behaves: names, CHAP secrets, the operational
//! values we offer in login (RFC 7143 §13), queue depth, keepalive and timeouts, and
//! for [`crate::Client`] the number of sessions and the reconnect backoff.

use std::net::SocketAddr;
use std::time::Duration;

/// CHAP secrets for logging in to one target (RFC 7143 §12.1.3).
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    /// Our CHAP name (`CHAP_N`) and secret.
    pub username: String,
    pub secret: String,
    /// Mutual CHAP: the name and secret the target must prove it knows.
    pub mutual: Option<(String, String)>,
}

impl std::fmt::Debug for ChapCredentials {
    // Secrets are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("mutual", &self.mutual.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// Configuration of sessions to one back-end target.
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    /// Portal to connect to.
    pub portal: SocketAddr,
    /// Our iSCSI name (`InitiatorName`).
    pub initiator_name: String,
    /// The target's iSCSI name (`TargetName`).
    pub target_name: String,
    /// CHAP; `None` logs in with `AuthMethod=None`.
    pub chap: Option<ChapCredentials>,
    /// Offer `CRC32C,None` for HeaderDigest / DataDigest (else `None` only).
    pub header_digest: bool,
    pub data_digest: bool,
    /// Our MaxRecvDataSegmentLength: the largest data segment we accept.
    pub max_recv_data_segment: u32,
    /// What we propose for MaxBurstLength and FirstBurstLength.
    pub max_burst: u32,
    pub first_burst: u32,
    /// What we propose for InitialR2T and ImmediateData.
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// What we propose for MaxOutstandingR2T.
    pub max_outstanding_r2t: u16,
    /// Commands one session keeps outstanding at most (further callers wait).
    pub queue_depth: usize,
    /// TCP connect timeout, and the time a whole login may take.
    pub connect_timeout: Duration,
    pub login_timeout: Duration,
    /// Idle time after which we ping the target with NOP-Out (`None`: never), and
    /// how long we wait for its NOP-In before dropping the connection.
    pub nop_interval: Option<Duration>,
    pub nop_timeout: Duration,
    /// How long an ABORT TASK for a timed-out command may take before we give up and
    /// drop the connection.
    pub abort_timeout: Duration,
    /// How long a Logout may take.
    pub logout_timeout: Duration,
    /// Fixed ISID (RFC 7143 §11.12.5); `None` picks a random one of type "random".
    /// A [`crate::Client`] keeps each session's ISID across reconnects.
    pub isid: Option<[u8; 6]>,
    /// [`crate::Client`]: sessions to open to this target (round-robin).
    pub sessions: usize,
    /// [`crate::Client`]: reconnect backoff, doubling from `initial` up to `max`.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl InitiatorConfig {
    /// Defaults for a LAN back-end: digests off, 256 KiB data segments, 1 MiB bursts,
    /// immediate and unsolicited data, queue depth 32, one session.
    pub fn new(
        portal: SocketAddr,
        initiator_name: impl Into<String>,
        target_name: impl Into<String>,
    ) -> InitiatorConfig {
        InitiatorConfig {
            portal,
            initiator_name: initiator_name.into(),
            target_name: target_name.into(),
            chap: None,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment: 256 * 1024,
            max_burst: 1024 * 1024,
            first_burst: 256 * 1024,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 4,
            queue_depth: 32,
            connect_timeout: Duration::from_secs(5),
            login_timeout: Duration::from_secs(15),
            nop_interval: Some(Duration::from_secs(10)),
            nop_timeout: Duration::from_secs(15),
            abort_timeout: Duration::from_secs(5),
            logout_timeout: Duration::from_secs(5),
            isid: None,
            sessions: 1,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
        }
    }
}

/// A random ISID of type "random" (RFC 7143 §11.12.5: T = 10b, A/B/C random bits,
/// qualifier `qualifier`).
pub fn random_isid(qualifier: u16) -> [u8; 6] {
    let r: [u8; 4] = rand::random();
    let q = qualifier.to_be_bytes();
    [0x80 | (r[0] & 0x3f), r[1], r[2], r[3], q[0], q[1]]
}
