//! Errors of the initiator. Every message names the portal or target involved and,
//! where the user can do something about it, says what.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The target answered with a non-zero Status-Class (RFC 7143 §11.13.5).
    #[error("target {target} at {portal} refused the login: status {class:#04x}/{detail:#04x} ({})", login_status_text(*class, *detail))]
    Refused {
        portal: SocketAddr,
        target: String,
        class: u8,
        detail: u8,
    },
    /// The target redirected us too many times.
    #[error(
        "target {target} redirected the login more than {0} times",
        MAX_REDIRECTS
    )]
    TooManyRedirects { target: String },
    /// CHAP failed on our side: the target did not prove its identity (mutual CHAP), or
    /// it asked for something we cannot do.
    #[error("CHAP with target {target} at {portal} failed: {why}")]
    Chap {
        portal: SocketAddr,
        target: String,
        why: String,
    },
    /// The target broke the login protocol or proposed values we cannot use.
    #[error("login to {target} at {portal}: {why}")]
    Protocol {
        portal: SocketAddr,
        target: String,
        why: String,
    },
}

/// How often [`crate::Session::connect`] follows a "target moved" answer.
pub const MAX_REDIRECTS: usize = 4;

/// Plain-language text for a login status (RFC 7143 §11.13.5).
pub fn login_status_text(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (1, 1) => "target moved temporarily",
        (1, 2) => "target moved permanently",
        (2, 0) => "initiator error",
        (2, 1) => "authentication failed: check the CHAP user name and secret",
        (2, 2) => "not authorised: add this initiator to the target's ACL",
        (2, 3) => "target not found: check the target name",
        (2, 4) => "target removed",
        (2, 5) => "unsupported iSCSI version",
        (2, 6) => "too many connections",
        (2, 7) => "missing parameter",
        (2, 8) => "cannot include connection in session",
        (2, 9) => "session type not supported",
        (2, 10) => "session does not exist",
        (2, 11) => "invalid request during login",
        (3, 0) => "target error",
        (3, 1) => "service unavailable",
        (3, 2) => "target out of resources",
        _ => "unknown status",
    }
}

/// Errors of sessions, clients and commands.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InitiatorError {
    /// TCP connect or socket I/O failed.
    #[error("{portal}: {what}: {kind}")]
    Io {
        portal: SocketAddr,
        what: &'static str,
        kind: io::ErrorKind,
    },
    #[error(transparent)]
    Login(#[from] LoginError),
    /// Login or logout did not finish in time.
    #[error("{what} with {portal} did not finish within {after:?}")]
    PhaseTimeout {
        portal: SocketAddr,
        what: &'static str,
        after: Duration,
    },
    /// The command was never sent: the session was already down. Safe to retry.
    #[error("not connected to {target} at {portal} (command not sent)")]
    NotConnected { portal: SocketAddr, target: String },
    /// The connection died while the command was in flight: the target may or may
    /// not have executed it.
    #[error("connection to {target} at {portal} was lost while the command was in flight ({why}); the command may or may not have run")]
    ConnectionLost {
        portal: SocketAddr,
        target: String,
        why: String,
    },
    /// The command did not complete in time; it was aborted (ABORT TASK) or, when the
    /// abort failed too, the connection was dropped.
    #[error("command {opcode:#04x} to {target} did not complete within {after:?}; it was aborted")]
    Timeout {
        target: String,
        opcode: u8,
        after: Duration,
    },
    /// The target rejected the command PDU (RFC 7143 §11.17).
    #[error("target {target} rejected the command (reason {reason:#04x})")]
    Rejected { target: String, reason: u8 },
    /// The iSCSI layer reported a failure (SCSI Response "target failure").
    #[error("target {target} reported an iSCSI service response {response:#04x} (target failure)")]
    TargetFailure { target: String, response: u8 },
    /// The target broke the protocol in full feature phase; the connection was dropped.
    #[error("protocol error from {target}: {why}")]
    Protocol { target: String, why: String },
    /// A SCSI command needed to set something up failed.
    #[error("{target}: {what}")]
    CommandFailed { target: String, what: String },
    /// Bad arguments from the caller.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The session or client was closed by its owner.
    #[error("session to {target} is closed")]
    Closed { target: String },
}

impl InitiatorError {
    /// True when the command certainly did not reach the target, so any command may
    /// be sent again.
    pub fn never_sent(&self) -> bool {
        matches!(self, InitiatorError::NotConnected { .. })
    }

    /// True when the session this came from is unusable (the caller should reconnect).
    pub fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            InitiatorError::NotConnected { .. }
                | InitiatorError::ConnectionLost { .. }
                | InitiatorError::Io { .. }
                | InitiatorError::Protocol { .. }
        )
    }

    /// The closest `io::ErrorKind`, for callers that speak `std::io`.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            InitiatorError::Io { kind, .. } => *kind,
            InitiatorError::Timeout { .. } | InitiatorError::PhaseTimeout { .. } => {
                io::ErrorKind::TimedOut
            }
            InitiatorError::NotConnected { .. } => io::ErrorKind::NotConnected,
            InitiatorError::ConnectionLost { .. } => io::ErrorKind::ConnectionAborted,
            InitiatorError::Login(LoginError::Refused { .. } | LoginError::Chap { .. }) => {
                io::ErrorKind::PermissionDenied
            }
            InitiatorError::Invalid(_) => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        }
    }
}
