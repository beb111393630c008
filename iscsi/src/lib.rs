//! iSCSI fabric (RFC 7143), target side, on tokio.
//!
//! - [`server`]: portals, connection limits, session registry (TSIH, reinstatement);
//! - [`login`]: security (CHAP) and operational negotiation;
//! - [`conn`]: full feature phase — command window, write data gathering, task
//!   management, text (SendTargets), NOP, logout;
//! - [`writer`]: the sending half — StatSN numbering, Data-In splitting, batching;
//! - [`codec`]: bounded PDU framing and digest checks;
//! - [`busy_poll`]: when a connection polls for the host's next command.
//!
//! Wire formats live in the `iscsi-wire` crate; SCSI semantics in the `scsi` crate.

pub mod busy_poll;
pub mod codec;
pub mod conn;
pub mod login;
pub mod seq;
pub mod server;
pub mod session;
pub mod target;
pub mod writer;

pub use server::{FabricConfig, Server, SessionInfo, Stats, TargetsUpdate};
pub use target::{ChapConfig, LunDef, PortalDef, TargetDef};
