//! SCSI target core (SPC-4 / SBC-3): CDBs parsed into typed commands, sense data as typed
//! errors, and the primary and block command sets executed over a
//! [`blockdev::BlockStore`]. No sockets and no async runtime: a fabric (iSCSI, a
//! loopback fabric in tests) hands a [`Request`] to [`LunMap::execute`] and sends back
//! the [`Response`].
//!
//! Layout (one file per concern, named after the spec area it implements):
//! - [`sense`]: sense keys, additional sense codes, fixed and descriptor formats.
//! - [`cdb`]: CDB bytes → [`Cdb`] (nom), with field pointers for INVALID FIELD IN CDB.
//! - [`commands`]: the one command table (REPORT SUPPORTED OPERATION CODES comes from it).
//! - `inquiry`, `vpd`, `mode`, `spc`, `sbc`: command executors.
//! - `nexus`, `reservation`, `pr`: per-I_T-nexus unit attentions, SPC-2 reservations
//!   and persistent reservations (SPC-4 5.13); `pr_store`: persisting them (APTPL);
//!   `pr_cluster`: the [`PrCoordinator`] hook that makes them coherent across nodes.
//! - [`LogicalUnit`] (`lu.rs`) and [`LunMap`] (`target.rs`): routing and per-LU state.
//! - `thin`: logical block provisioning (UNMAP, GET LBA STATUS, WRITE SAME unmap);
//!   `caw`: COMPARE AND WRITE and WRITE ATOMIC over the per-LU range locks of
//!   `range_lock`; `tmf`: REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
//! - `xcopy`: the copy manager (EXTENDED COPY LID1, RECEIVE COPY RESULTS, VPD 8Fh);
//!   [`xcopy_builder`]: the same formats from the initiator side, for copy offload.
//!
//! # Contract with the fabric
//!
//! The fabric builds a [`Request`] per SCSI command with the data-out it received (at
//! most the Expected Data Transfer Length), calls [`LunMap::execute`], and sends back
//! [`Response::data_in`] truncated to the Expected Data Transfer Length, the status, and
//! on CHECK CONDITION the bytes of [`Response::sense_bytes`] (fixed or descriptor format,
//! as the logical unit's D_SENSE bit asks). Residuals are computed by the fabric from
//! `data_in.len()` (reads) or [`Response::data_out_len`] (writes) against the Expected
//! Data Transfer Length.
#![forbid(unsafe_code)]

mod alua;
mod async_io;
mod caw;
pub mod cdb;
pub mod commands;
mod inquiry;
mod lu;
mod mode;
mod nexus;
mod pr;
mod pr_cluster;
mod pr_move;
mod pr_store;
mod range_lock;
mod reservation;
mod sbc;
pub mod sense;
mod spc;
mod target;
mod thin;
mod tmf;
mod vpd;
mod write_drain;
mod xcopy;
pub mod xcopy_builder;

#[cfg(test)]
mod alua_tests;
#[cfg(test)]
mod async_io_tests;
#[cfg(test)]
mod pr_cluster_tests;
#[cfg(test)]
mod pr_persist_tests;
#[cfg(test)]
mod pr_tests;
#[cfg(test)]
mod preempt_abort_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod thin_tests;

pub use alua::{
    access_state_changed, AluaError, AluaState, PortGroup, PortGroups, TargetPortGroups,
};
pub use async_io::{ResponseFuture, Started};
pub use cdb::{check_range, parse_cdb, ByteCheck, Cdb, PageControl, PrIn, PrOut};
pub use commands::{CommandInfo, DataDirection, PrAccess, COMMANDS};
pub use lu::{Limits, LogicalUnit, LuConfig, PR_COMMIT_ATTEMPTS};
pub use pr_cluster::{PrAttention, PrClusterError, PrCommitError, PrCoordinator};
pub use pr_store::{
    FilePrStore, MemPrStore, PrHolder, PrRegistration, PrSnapshot, PrStore, PrStoreError,
    Spc2Holder,
};
pub use sense::{FieldPointer, IoKind, Sense, SenseKey};
pub use target::{LunMap, PortAccess, PortRefusal};

/// One I_T nexus (initiator port + target port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nexus {
    /// Unique per nexus for the life of the process.
    pub id: u64,
    /// Initiator port name, e.g. "iqn.1994-05.com.redhat:x,i,0x00023d000001".
    pub initiator: String,
    /// Relative target port identifier (1-based).
    pub relative_port: u16,
    /// Target port group. Informational: a logical unit reports and enforces the group
    /// its [`PortGroups`] model puts `relative_port` in.
    pub port_group: u16,
}

/// Identity of the SCSI target device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// Target device name, e.g. "iqn.2026-11.org.switchyard:quickstart".
    pub name: String,
    /// Target port name, e.g. "<name>,t,0x0001".
    pub port_name: String,
}

/// A SCSI command as the fabric received it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Decoded LUN number (SAM-5 flat/peripheral addressing).
    pub lun: u64,
    /// The CDB: 6..=16 bytes (or more with AHS). Trailing padding is ignored.
    pub cdb: &'a [u8],
    /// Data the initiator sent (at most Expected Data Transfer Length bytes).
    pub data_out: &'a [u8],
    /// Expected Data Transfer Length for reads (0 if none). The core does not need it:
    /// `data_in` is what the command produces, and the fabric truncates.
    pub data_in_len: u32,
    /// The I_T nexus the command arrived on.
    pub nexus: &'a Nexus,
}

/// SCSI status (SAM-5 5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Good,
    CheckCondition,
    ConditionMet,
    Busy,
    ReservationConflict,
    TaskSetFull,
    TaskAborted,
}

impl Status {
    /// The status byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Status::Good => 0x00,
            Status::CheckCondition => 0x02,
            Status::ConditionMet => 0x04,
            Status::Busy => 0x08,
            Status::ReservationConflict => 0x18,
            Status::TaskSetFull => 0x28,
            Status::TaskAborted => 0x40,
        }
    }
}

/// The outcome of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Good, CheckCondition, ConditionMet, Busy, ReservationConflict, ...
    pub status: Status,
    /// Data for the initiator: everything the command produces, truncated to the
    /// allocation length where the CDB has one. The fabric truncates further to the
    /// Expected Data Transfer Length and reports the residual.
    pub data_in: Vec<u8>,
    /// Set with CheckCondition.
    pub sense: Option<Sense>,
    /// Bytes of data-out the CDB asked for (for residual counts).
    pub data_out_len: u32,
    /// The logical unit asked for descriptor-format sense data (control mode page
    /// D_SENSE=1). [`Response::sense_bytes`] honours it.
    pub descriptor_sense: bool,
}

impl Response {
    /// GOOD status with data.
    pub fn good(data_in: Vec<u8>) -> Response {
        Response {
            status: Status::Good,
            data_in,
            sense: None,
            data_out_len: 0,
            descriptor_sense: false,
        }
    }

    /// CHECK CONDITION with sense data (fixed format unless changed).
    pub fn check_condition(sense: Sense) -> Response {
        Response {
            status: Status::CheckCondition,
            data_in: Vec::new(),
            sense: Some(sense),
            data_out_len: 0,
            descriptor_sense: false,
        }
    }

    /// A status without data or sense (RESERVATION CONFLICT, BUSY, ...).
    pub fn status(status: Status) -> Response {
        Response {
            status,
            data_in: Vec::new(),
            sense: None,
            data_out_len: 0,
            descriptor_sense: false,
        }
    }

    /// The sense bytes to send with the status (empty without sense): descriptor
    /// format when the logical unit's D_SENSE bit is set, fixed format otherwise.
    pub fn sense_bytes(&self) -> Vec<u8> {
        match &self.sense {
            Some(s) if self.descriptor_sense => s.descriptor(),
            Some(s) => s.fixed(),
            None => Vec::new(),
        }
    }
}
