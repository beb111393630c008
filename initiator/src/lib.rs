//! iSCSI initiator (RFC 7143) on tokio: how a switchyard node reaches the LUNs of
//! back-end arrays (other switchyard nodes acting as arrays, tgtd, real arrays).
//!
//! Layers, each on the one below:
//!
//! - [`login`]: the login phase — CHAP (one-way or mutual) and operational
//!   negotiation, giving the [`NegotiatedParams`] the session obeys;
//! - [`Session`] (`session.rs`): one connection in full feature phase — commands
//!   multiplexed by ITT, the CmdSN window, immediate/unsolicited/R2T write data,
//!   Data-In reassembly, NOP keepalive, ABORT TASK on timeout, Logout;
//! - [`Client`] (`client.rs`): N sessions to a target, round-robin, reconnect with
//!   backoff and session reinstatement, one retry of idempotent commands;
//! - [`RemoteStore`] (`remote.rs`): a [`blockdev::BlockStore`] over one remote LUN,
//!   so a back-end LU can be served like a local file, and copy offload between two
//!   LUs of one array with EXTENDED COPY ([`RemoteStore::extended_copy_to`]).
//!
//! Wire formats come from `iscsi-wire`; this crate adds the I/O.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod error;
pub mod login;
pub mod outcome;
pub mod remote;
pub mod session;

pub use client::{is_idempotent, Client};
pub use config::{ChapCredentials, InitiatorConfig};
pub use error::{InitiatorError, LoginError};
pub use login::NegotiatedParams;
pub use outcome::{Residual, ScsiOutcome, SenseInfo};
pub use remote::{CawSupport, OffloadOutcome, RemoteIoError, RemoteStore, RemoteStoreOptions};
pub use session::Session;
