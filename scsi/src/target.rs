//! The LUNs one target exposes to one initiator, and command routing (SAM-5 4.6, SPC-4
//! 6.6.2, 6.33, 6.39): commands go to their logical unit; REPORT LUNS is answered for
//! any LUN; a LUN that does not exist answers INQUIRY with peripheral qualifier 011b,
//! REQUEST SENSE with LOGICAL UNIT NOT SUPPORTED sense data, and everything else with
//! CHECK CONDITION, LOGICAL UNIT NOT SUPPORTED.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cdb::{parse_cdb, Cdb};
use crate::lu::{truncate, Ctx, LogicalUnit};
use crate::sense::Sense;
use crate::{inquiry, spc, Nexus, Request, Response, TargetInfo};

/// Why a command may not name another initiator port (see [`PortAccess`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRefusal {
    /// The zoning / LUN masking does not let that initiator reach the logical unit.
    Initiator,
    /// The target has no port with that relative target port identifier.
    Port,
}

/// The fabric's access rules, for commands that name another initiator port
/// (PERSISTENT RESERVE OUT REGISTER AND MOVE): may initiator `initiator` (its name,
/// without the ISID) reach `lu` through relative target port `relative_port`?
pub trait PortAccess: Send + Sync + std::fmt::Debug {
    fn check(
        &self,
        initiator: &str,
        relative_port: u16,
        lu: &LogicalUnit,
    ) -> Result<(), PortRefusal>;
}

/// The LUNs one target exposes to one initiator.
#[derive(Debug)]
pub struct LunMap {
    target: Arc<TargetInfo>,
    luns: BTreeMap<u64, Arc<LogicalUnit>>,
    /// The fabric's access rules; `None`: every initiator port may be named.
    access: Option<Arc<dyn PortAccess>>,
}

impl LunMap {
    pub fn new(target: Arc<TargetInfo>) -> LunMap {
        LunMap {
            target,
            luns: BTreeMap::new(),
            access: None,
        }
    }

    /// Check commands that name other initiator ports against `access`.
    pub fn with_access(mut self, access: Arc<dyn PortAccess>) -> LunMap {
        self.access = Some(access);
        self
    }

    /// The fabric's access rules, if any.
    pub(crate) fn access(&self) -> Option<&Arc<dyn PortAccess>> {
        self.access.as_ref()
    }

    /// Adds (or replaces) a LUN. Silent: a map is often built per session over shared
    /// logical units, so changing a map that is already serving commands should be
    /// followed by [`LunMap::lun_inventory_changed`].
    pub fn insert(&mut self, lun: u64, lu: Arc<LogicalUnit>) {
        self.luns.insert(lun, lu);
    }

    /// Removes a LUN (silent, like [`LunMap::insert`]).
    pub fn remove(&mut self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.luns.remove(&lun)
    }

    /// The logical unit at `lun`.
    pub fn get(&self, lun: u64) -> Option<&Arc<LogicalUnit>> {
        self.luns.get(&lun)
    }

    /// The target this map belongs to.
    pub fn target(&self) -> &TargetInfo {
        &self.target
    }

    /// LUN numbers, ascending.
    pub fn luns(&self) -> impl Iterator<Item = u64> + '_ {
        self.luns.keys().copied()
    }

    /// The LUN inventory of a live map changed: every logical unit in it raises
    /// REPORTED LUNS DATA HAS CHANGED for the nexuses it knows (SPC-4 6.33). Note that
    /// this reaches every nexus of a shared logical unit, not only this map's.
    pub fn lun_inventory_changed(&self) {
        for lu in self.luns.values() {
            lu.notify(None, &Sense::reported_luns_changed());
        }
    }

    /// REPORT LUNS ran on this nexus: clear REPORTED LUNS DATA HAS CHANGED everywhere
    /// (SPC-4 6.33).
    pub(crate) fn luns_reported(&self, nexus: u64) {
        for lu in self.luns.values() {
            lu.nexus(nexus).clear(0x3F, 0x0E);
        }
    }

    /// Runs one command.
    /// May this command run inline on the fabric's event loop? True only for plain
    /// READ and (cached, non-FUA) WRITE commands of at most 1 MiB on a store that says
    /// its I/O never sleeps long ([`blockdev::BlockStore::inline_ok`]). Everything else
    /// (flushes, FUA, UNMAP, EXTENDED COPY, remote stores) belongs on a thread pool.
    pub fn inline_ok(&self, lun: u64, cdb: &[u8]) -> bool {
        let Some(lu) = self.luns.get(&lun) else {
            return false;
        };
        let store = lu.store();
        if !store.inline_ok() || cdb.is_empty() {
            return false;
        }
        let bs = u64::from(store.block_size());
        let (blocks, fua, write) = match (cdb[0], cdb.len()) {
            (0x28, 10..) => (
                u64::from(u16::from_be_bytes([cdb[7], cdb[8]])),
                false,
                false,
            ),
            (0x88, 16..) => (
                u64::from(u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]])),
                false,
                false,
            ),
            (0x2a, 10..) => (
                u64::from(u16::from_be_bytes([cdb[7], cdb[8]])),
                cdb[1] & 0x08 != 0,
                true,
            ),
            (0x8a, 16..) => (
                u64::from(u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]])),
                cdb[1] & 0x08 != 0,
                true,
            ),
            _ => return false,
        };
        if write && (fua || !lu.mode().wce) {
            return false;
        }
        blocks * bs <= 1 << 20
    }

    pub fn execute(&self, req: &Request<'_>) -> Response {
        let ctx = Ctx { map: self };
        match self.luns.get(&req.lun) {
            Some(lu) => lu.execute(&ctx, req),
            None => self.no_such_lun(req),
        }
    }

    fn no_such_lun(&self, req: &Request<'_>) -> Response {
        if !matches!(req.cdb.first(), Some(0x12 | 0xA0 | 0x03)) {
            return Response::check_condition(Sense::lun_not_supported());
        }
        let cdb = match parse_cdb(req.cdb) {
            Ok(cdb) => cdb,
            Err(sense) => return Response::check_condition(sense),
        };
        match cdb {
            Cdb::Inquiry {
                evpd: false, alloc, ..
            } => Response::good(truncate(inquiry::standard(None), usize::from(alloc))),
            Cdb::ReportLuns { select, alloc } => {
                let data = spc::report_luns(self.luns(), select);
                self.luns_reported(req.nexus.id);
                Response::good(truncate(data, alloc as usize))
            }
            Cdb::RequestSense { desc, alloc } => {
                Response::good(spc::request_sense(&Sense::lun_not_supported(), desc, alloc))
            }
            _ => Response::check_condition(Sense::lun_not_supported()),
        }
    }

    /// Does `other` route every LUN to the same logical unit as this map?
    pub fn same_luns(&self, other: &LunMap) -> bool {
        self.luns.len() == other.luns.len()
            && self
                .luns
                .iter()
                .zip(other.luns.iter())
                .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
    }

    /// This map replaces `old` on the live session of `nexus` (LUNs were added or
    /// removed online): every logical unit of the new map raises REPORTED LUNS DATA
    /// HAS CHANGED for this nexus (SPC-4 6.33), and the logical units that left the
    /// map forget the nexus (as when its session ends).
    pub fn replaces(&self, old: &LunMap, nexus: &Nexus) {
        for lu in self.luns.values() {
            lu.nexus(nexus.id).push(Sense::reported_luns_changed());
        }
        for (lun, lu) in &old.luns {
            if !self.luns.get(lun).is_some_and(|n| Arc::ptr_eq(n, lu)) {
                lu.nexus_gone(nexus.id);
            }
        }
    }

    /// The session of this nexus ended: its reservations and unit attentions go.
    pub fn nexus_gone(&self, nexus: &Nexus) {
        for lu in self.luns.values() {
            lu.nexus_gone(nexus.id);
        }
    }

    /// The session of this nexus logs out: release what it reserved and, in a cluster,
    /// wait until the release is committed everywhere. Blocks (call it from a
    /// blocking thread); `nexus_gone` still follows when the session ends.
    pub fn release_nexus_blocking(&self, nexus: &Nexus) {
        for lu in self.luns.values() {
            lu.release_spc2_blocking(nexus.id);
        }
    }

    /// LOGICAL UNIT RESET task management function. Err: no such LUN.
    #[allow(clippy::result_unit_err)]
    pub fn lun_reset(&self, lun: u64, nexus: &Nexus) -> Result<(), ()> {
        let lu = self.luns.get(&lun).ok_or(())?;
        // SAM-5 §6.3.3: the unit attention goes to every I_T nexus, the issuer's
        // included (libiscsi's MultipathIO.Reset checks each path).
        let _ = nexus;
        lu.reset(None);
        Ok(())
    }

    /// TARGET (WARM/COLD) RESET task management function: every logical unit is reset.
    pub fn target_reset(&self, nexus: &Nexus) {
        let _ = nexus;
        for lu in self.luns.values() {
            lu.reset(None);
        }
    }
}
