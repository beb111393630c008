//! Session-wide state (RFC 7143 §4.4): identity (ISID, TSIH, initiator, target), the
//! command window, the LUN map the initiator sees, and the handle the server uses to
//! end a session (reinstatement, shutdown).

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use scsi::{LunMap, Nexus};
use tokio_util::sync::CancellationToken;

use crate::seq::CmdWindow;
use crate::target::TargetDef;

/// Identifies a session for reinstatement: same initiator, ISID and target (§6.3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator: String,
    pub isid: [u8; 6],
    pub target: String,
}

/// One iSCSI session (with ErrorRecoveryLevel 0 and MaxConnections 1: one connection).
pub struct Session {
    pub key: SessionKey,
    pub tsih: u16,
    /// `None` for a discovery session.
    pub target: Option<Arc<TargetDef>>,
    /// The LUNs this session sees; replaced when the target's LUNs or the zoning
    /// change online (`ServerShared::update_targets`).
    pub luns: ArcSwap<LunMap>,
    pub nexus: Arc<Nexus>,
    pub window: Mutex<CmdWindow>,
    /// Cancelled to end the session from outside (reinstatement, shutdown, reset).
    pub kill: CancellationToken,
    /// Cancelled when the connection has closed.
    pub conn_closed: CancellationToken,
    /// The local address the initiator connected to (for SendTargets on wildcard portals).
    pub local_addr: std::net::SocketAddr,
}

impl Session {
    /// (ExpCmdSN, MaxCmdSN) as of now.
    pub fn window_values(&self) -> (u32, u32) {
        let mut w = self.window.lock();
        (w.exp_cmd_sn, w.max_cmd_sn())
    }

    pub fn is_discovery(&self) -> bool {
        self.target.is_none()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .field("tsih", &self.tsih)
            .finish()
    }
}

/// Format an ISID for logs and the SCSI initiator port name (`0x` + 12 hex digits).
pub fn isid_hex(isid: &[u8; 6]) -> String {
    let mut s = String::from("0x");
    for b in isid {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
