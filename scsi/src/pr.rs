//! Persistent reservations (SPC-4 5.13): PERSISTENT RESERVE IN (6.15) and OUT (6.16),
//! and the "does this command conflict?" rule for them (SPC-4 table 47, SBC-3 table
//! 13), driven by the command table's [`PrAccess`] column.
//!
//! The state of one logical unit is [`PrState`]: plain data (registrations, the
//! reservation, the generation counter), changed only by the transitions below, each of
//! which returns the unit attentions it raises instead of raising them. The logical unit
//! keeps it in [`PersistentReservations`] and delivers those unit attentions, so a
//! cluster-coherent store can later replace the lock without touching the rules.
//!
//! Registrations are keyed by I_T nexus identity: initiator port name (iSCSI: name plus
//! ",i,0x<ISID>") and relative target port. They survive I_T nexus loss and LUN resets
//! (SPC-4 5.13.2). They survive a restart when the logical unit has a
//! [`crate::PrStore`] and the last register action had APTPL=1 (PTPL_C=1, PTPL_A
//! reports the current APTPL); without a store APTPL=1 is refused and PTPL_C=0. With a
//! [`crate::PrCoordinator`] (`pr_cluster.rs`) every change is committed cluster-wide
//! before the PR OUT completes, and the cluster is the persistent store (PTPL_C=1);
//! the state then also carries the SPC-2 reservation holder ([`PrState::spc2`]).
//! REGISTER AND MOVE is in `pr_move.rs`. Not implemented: SPEC_I_PT (refused,
//! SIP_C=0). PREEMPT AND ABORT preempts and raises the same unit attentions as PREEMPT,
//! then waits until every write admitted before it has finished (`write_drain.rs`), so
//! that none of the preempted initiator's writes lands after it completes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::cdb::{Cdb, PrIn, PrOut};
use crate::commands::PrAccess;
use crate::pr_move::{self, MoveTarget};
use crate::sense::Sense;

/// I_T nexus identity as persistent reservations see it (SPC-4 5.13.2: a
/// registration belongs to an initiator port and a target port, not to a session).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ItNexus {
    /// Initiator port name, e.g. "iqn.1994-05.com.redhat:x,i,0x00023d000001".
    pub(crate) initiator: String,
    /// Relative target port identifier.
    pub(crate) relative_port: u16,
}

impl ItNexus {
    pub(crate) fn of(n: &crate::Nexus) -> ItNexus {
        ItNexus {
            initiator: n.initiator.clone(),
            relative_port: n.relative_port,
        }
    }
}

/// Persistent reservation types (SPC-4 6.16.2, table 188).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub(crate) fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    fn code(self) -> u8 {
        self as u8
    }

    /// Every registrant is a reservation holder.
    pub(crate) fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants-only or all-registrants: registrants get the holder's access.
    fn registrants_share(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Reads by others are refused too (the Exclusive Access family).
    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// One registered I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registration {
    pub(crate) nexus: ItNexus,
    pub(crate) key: u64,
    /// ALL_TG_PT was set when it registered. With one target port it changes nothing
    /// but is reported back in READ FULL STATUS.
    pub(crate) all_tg_pt: bool,
}

/// The persistent reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reservation {
    /// The I_T nexus that created it (for all-registrants types every registrant is a
    /// holder and this is only informative).
    pub(crate) holder: ItNexus,
    pub(crate) pr_type: PrType,
}

/// A unit attention for one I_T nexus identity.
pub(crate) type Attention = (ItNexus, Sense);

/// Why a PERSISTENT RESERVE OUT did not complete with GOOD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrError {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION.
    Sense(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> PrError {
        PrError::Sense(s)
    }
}

/// The PERSISTENT RESERVE OUT parameter list (SPC-4 6.16.3), without the obsolete and
/// SPEC_I_PT parts, or the REGISTER AND MOVE one (6.16.4) with its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProutParams {
    pub(crate) key: u64,
    pub(crate) sa_key: u64,
    pub(crate) all_tg_pt: bool,
    pub(crate) aptpl: bool,
    /// REGISTER AND MOVE only.
    pub(crate) mv: Option<MoveTarget>,
}

/// Length of the basic PERSISTENT RESERVE OUT parameter list.
const PARAM_LEN: usize = 24;

impl ProutParams {
    /// Parses the parameter list: PARAMETER LIST LENGTH ERROR unless it is 24 bytes;
    /// SPEC_I_PT, and APTPL for the service actions that evaluate it when the logical
    /// unit cannot persist (`ptpl_c` false), are INVALID FIELD IN PARAMETER LIST.
    pub(crate) fn parse(
        action: PrOut,
        param_len: u32,
        data: &[u8],
        ptpl_c: bool,
    ) -> Result<ProutParams, Sense> {
        if action == PrOut::RegisterAndMove {
            let p = pr_move::parse(param_len, data)?;
            if p.aptpl && !ptpl_c {
                return Err(Sense::invalid_field_in_param_list(17, Some(0)));
            }
            return Ok(p);
        }
        if param_len as usize != PARAM_LEN || data.len() < PARAM_LEN {
            return Err(Sense::parameter_list_length_error());
        }
        let flags = data[20];
        if flags & 0x08 != 0 {
            return Err(Sense::invalid_field_in_param_list(20, Some(3)));
        }
        let aptpl = flags & 0x01 != 0;
        let registers = matches!(action, PrOut::Register | PrOut::RegisterAndIgnore);
        if aptpl && registers && !ptpl_c {
            return Err(Sense::invalid_field_in_param_list(20, Some(0)));
        }
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[o..o + 8]);
            u64::from_be_bytes(b)
        };
        Ok(ProutParams {
            key: u64_at(0),
            sa_key: u64_at(8),
            all_tg_pt: flags & 0x04 != 0,
            aptpl,
            mv: None,
        })
    }
}

/// Persistent reservation state of one logical unit (plain data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PrState {
    /// PRGENERATION: bumped by every successful REGISTER, REGISTER AND IGNORE
    /// EXISTING KEY, CLEAR, PREEMPT and PREEMPT AND ABORT (SPC-4 6.15.2).
    pub(crate) generation: u32,
    /// In registration order (READ KEYS reports them so).
    pub(crate) registrations: Vec<Registration>,
    pub(crate) reservation: Option<Reservation>,
    /// Activate Persist Through Power Loss: the APTPL bit of the last successful
    /// REGISTER, REGISTER AND IGNORE EXISTING KEY or REGISTER AND MOVE.
    pub(crate) aptpl: bool,
    /// The SPC-2 reservation holder, with a [`crate::PrCoordinator`] only: it is then
    /// committed and installed together with the rest (`reservation.rs` explains).
    /// Without one it is always `None` and the SPC-2 reservation is kept by local
    /// nexus id in [`crate::reservation::Reservations`]. Not counted by
    /// [`PrState::is_empty`] and not reported by PERSISTENT RESERVE IN.
    pub(crate) spc2: Option<ItNexus>,
}

impl PrState {
    fn key_of(&self, n: &ItNexus) -> Option<u64> {
        self.registrations
            .iter()
            .find(|r| r.nexus == *n)
            .map(|r| r.key)
    }

    /// True when `n` holds the reservation (any registrant, for all-registrants).
    pub(crate) fn is_holder(&self, n: &ItNexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.pr_type.all_registrants() => self.key_of(n).is_some(),
            Some(r) => r.holder == *n,
        }
    }

    /// True when nothing is registered or reserved.
    pub(crate) fn is_empty(&self) -> bool {
        self.registrations.is_empty() && self.reservation.is_none()
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// RESERVATION CONFLICT unless `n` is registered with `key`.
    fn check_key(&self, n: &ItNexus, key: u64) -> Result<(), PrError> {
        match self.key_of(n) {
            Some(k) if k == key => Ok(()),
            _ => Err(PrError::Conflict),
        }
    }

    /// SPC-2 RESERVE by `n` with a coordinator: RESERVATION CONFLICT while anything
    /// is registered (SPC-4 5.13.3) or another nexus holds it; free or already held
    /// by `n`: `n` holds it. No unit attention.
    pub(crate) fn spc2_reserve(&mut self, n: &ItNexus) -> Result<Vec<Attention>, PrError> {
        if !self.is_empty() {
            return Err(PrError::Conflict);
        }
        match &self.spc2 {
            Some(h) if h != n => Err(PrError::Conflict),
            _ => {
                self.spc2 = Some(n.clone());
                Ok(Vec::new())
            }
        }
    }

    /// SPC-2 RELEASE by `n` with a coordinator: only the holder's has an effect
    /// (SPC-2 7.21: otherwise GOOD and nothing happens). No unit attention.
    pub(crate) fn spc2_release(&mut self, n: &ItNexus) -> Result<Vec<Attention>, PrError> {
        if self.spc2.as_ref() == Some(n) {
            self.spc2 = None;
        }
        Ok(Vec::new())
    }

    /// Unit attentions with `sense` for every registrant except `except`.
    fn to_registrants(&self, except: &ItNexus, sense: Sense) -> Vec<Attention> {
        self.registrations
            .iter()
            .filter(|r| r.nexus != *except)
            .map(|r| (r.nexus.clone(), sense.clone()))
            .collect()
    }

    /// SPC-4 table 47 / SBC-3 table 13: true when a command of this kind from `n`
    /// conflicts with the persistent reservation.
    pub(crate) fn conflicts(&self, n: &ItNexus, access: PrAccess) -> bool {
        if access == PrAccess::LegacyReserve {
            // SPC-4 5.13.3: RESERVE conflicts while anything is registered.
            return !self.is_empty();
        }
        let Some(res) = &self.reservation else {
            return false;
        };
        if self.is_holder(n) {
            return false;
        }
        let registrant_ok = res.pr_type.registrants_share() && self.key_of(n).is_some();
        match access {
            PrAccess::Allowed | PrAccess::PersistentReserve | PrAccess::LegacyReserve => false,
            PrAccess::Read => res.pr_type.exclusive_access() && !registrant_ok,
            PrAccess::Write | PrAccess::StartStop => !registrant_ok,
        }
    }

    /// REGISTER (SPC-4 5.13.7, table 50) and REGISTER AND IGNORE EXISTING KEY.
    pub(crate) fn register(
        &mut self,
        n: &ItNexus,
        p: &ProutParams,
        ignore_existing: bool,
    ) -> Result<Vec<Attention>, PrError> {
        match self.key_of(n) {
            None => {
                if !ignore_existing && p.key != 0 {
                    return Err(PrError::Conflict);
                }
                if p.sa_key != 0 {
                    self.registrations.push(Registration {
                        nexus: n.clone(),
                        key: p.sa_key,
                        all_tg_pt: p.all_tg_pt,
                    });
                    self.bump();
                }
                // Unregistering an unregistered nexus: GOOD, nothing changes.
                Ok(Vec::new())
            }
            Some(k) => {
                if !ignore_existing && p.key != k {
                    return Err(PrError::Conflict);
                }
                let uas = if p.sa_key == 0 {
                    self.unregister(n)
                } else {
                    if let Some(r) = self.registrations.iter_mut().find(|r| r.nexus == *n) {
                        r.key = p.sa_key;
                    }
                    Vec::new()
                };
                self.bump();
                Ok(uas)
            }
        }
    }

    /// Removes the registration of `n` and what goes with it (SPC-4 5.13.11.2.3): a
    /// holder's reservation is released (all-registrants: when the last registrant
    /// goes); releasing a registrants-only reservation tells the other registrants.
    fn unregister(&mut self, n: &ItNexus) -> Vec<Attention> {
        let was_holder = self.is_holder(n);
        self.registrations.retain(|r| r.nexus != *n);
        let Some(res) = self.reservation.clone() else {
            return Vec::new();
        };
        if res.pr_type.all_registrants() {
            if self.registrations.is_empty() {
                self.reservation = None;
            }
            return Vec::new();
        }
        if !was_holder {
            return Vec::new();
        }
        self.reservation = None;
        if res.pr_type.registrants_share() {
            self.to_registrants(n, Sense::reservations_released())
        } else {
            Vec::new()
        }
    }

    /// RESERVE (SPC-4 5.13.9).
    pub(crate) fn reserve(
        &mut self,
        n: &ItNexus,
        p: &ProutParams,
        scope: u8,
        pr_type: u8,
    ) -> Result<Vec<Attention>, PrError> {
        let t = valid_type(scope, pr_type)?;
        self.check_key(n, p.key)?;
        match &self.reservation {
            None => {
                self.reservation = Some(Reservation {
                    holder: n.clone(),
                    pr_type: t,
                });
                Ok(Vec::new())
            }
            // The holder reserving again with the same type: GOOD, no change.
            Some(r) if r.pr_type == t && self.is_holder(n) => Ok(Vec::new()),
            Some(_) => Err(PrError::Conflict),
        }
    }

    /// RELEASE (SPC-4 5.13.11.2.2).
    pub(crate) fn release(
        &mut self,
        n: &ItNexus,
        p: &ProutParams,
        scope: u8,
        pr_type: u8,
    ) -> Result<Vec<Attention>, PrError> {
        self.check_key(n, p.key)?;
        let Some(res) = self.reservation.clone() else {
            return Ok(Vec::new());
        };
        if !self.is_holder(n) {
            // Not the holder: GOOD, nothing happens.
            return Ok(Vec::new());
        }
        if scope != 0 || pr_type != res.pr_type.code() {
            return Err(Sense::invalid_release().into());
        }
        self.reservation = None;
        Ok(if res.pr_type.registrants_share() {
            self.to_registrants(n, Sense::reservations_released())
        } else {
            Vec::new()
        })
    }

    /// CLEAR (SPC-4 5.13.11.3): every registration and the reservation go; every other
    /// registrant gets RESERVATIONS PREEMPTED.
    pub(crate) fn clear(
        &mut self,
        n: &ItNexus,
        p: &ProutParams,
    ) -> Result<Vec<Attention>, PrError> {
        self.check_key(n, p.key)?;
        let uas = self.to_registrants(n, Sense::reservations_preempted());
        self.registrations.clear();
        self.reservation = None;
        self.bump();
        Ok(uas)
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 5.13.11.4).
    pub(crate) fn preempt(
        &mut self,
        n: &ItNexus,
        p: &ProutParams,
        scope: u8,
        pr_type: u8,
    ) -> Result<Vec<Attention>, PrError> {
        self.check_key(n, p.key)?;
        let uas = match self.reservation.clone() {
            // All-registrants with key 0: every other registration goes and the
            // preempting nexus holds a new reservation (5.13.11.4.3).
            Some(res) if res.pr_type.all_registrants() && p.sa_key == 0 => {
                let t = valid_type(scope, pr_type)?;
                let uas = self.remove_where(n, |r| r.nexus != *n);
                self.reservation = Some(Reservation {
                    holder: n.clone(),
                    pr_type: t,
                });
                uas
            }
            // Preempting the holder (5.13.11.4.3): the holder's key's registrations
            // go (not the preempting nexus'), the preempting nexus holds a new
            // reservation of the CDB's type.
            Some(res)
                if !res.pr_type.all_registrants() && self.key_of(&res.holder) == Some(p.sa_key) =>
            {
                let t = valid_type(scope, pr_type)?;
                let mut uas = self.remove_where(n, |r| r.key == p.sa_key && r.nexus != *n);
                self.reservation = Some(Reservation {
                    holder: n.clone(),
                    pr_type: t,
                });
                if t != res.pr_type {
                    uas.extend(self.to_registrants(n, Sense::reservations_released()));
                }
                uas
            }
            // Otherwise only registrations with the key go (5.13.11.4.4).
            _ => {
                if p.sa_key == 0 {
                    return Err(Sense::invalid_field_in_param_list(8, None).into());
                }
                if self.key_of_any(p.sa_key).is_none() {
                    return Err(PrError::Conflict);
                }
                let uas = self.remove_where(n, |r| r.key == p.sa_key);
                if matches!(&self.reservation, Some(r) if r.pr_type.all_registrants())
                    && self.registrations.is_empty()
                {
                    self.reservation = None;
                }
                uas
            }
        };
        self.bump();
        Ok(uas)
    }

    fn key_of_any(&self, key: u64) -> Option<&Registration> {
        self.registrations.iter().find(|r| r.key == key)
    }

    /// Removes the registrations `remove` picks; REGISTRATIONS PREEMPTED for each
    /// removed nexus except `issuer`.
    fn remove_where(
        &mut self,
        issuer: &ItNexus,
        remove: impl Fn(&Registration) -> bool,
    ) -> Vec<Attention> {
        let mut uas = Vec::new();
        self.registrations.retain(|r| {
            if !remove(r) {
                return true;
            }
            if r.nexus != *issuer {
                uas.push((r.nexus.clone(), Sense::registrations_preempted()));
            }
            false
        });
        uas
    }

    /// PERSISTENT RESERVE IN parameter data, before allocation-length truncation.
    /// `ptpl_c`: the logical unit can persist through power loss.
    pub(crate) fn read(&self, action: PrIn, ptpl_c: bool) -> Vec<u8> {
        let mut d = Vec::with_capacity(64);
        match action {
            PrIn::ReportCapabilities => return report_capabilities(ptpl_c, self.aptpl),
            PrIn::ReadKeys => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                d.extend_from_slice(&[0; 4]);
                for r in &self.registrations {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            PrIn::ReadReservation => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                d.extend_from_slice(&[0; 4]);
                if let Some(res) = &self.reservation {
                    // SPC-4 6.15.3: the key is zero for all-registrants types.
                    let key = if res.pr_type.all_registrants() {
                        0
                    } else {
                        self.key_of(&res.holder).unwrap_or(0)
                    };
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0; 4]); // obsolete
                    d.push(0);
                    d.push(res.pr_type.code()); // SCOPE 0h: logical unit
                    d.extend_from_slice(&[0; 2]); // obsolete
                }
            }
            PrIn::ReadFullStatus => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                d.extend_from_slice(&[0; 4]);
                for r in &self.registrations {
                    d.extend_from_slice(&r.key.to_be_bytes());
                    d.extend_from_slice(&[0; 4]);
                    let holder = self.is_holder(&r.nexus);
                    d.push(u8::from(r.all_tg_pt) << 1 | u8::from(holder));
                    d.push(match (&self.reservation, holder) {
                        (Some(res), true) => res.pr_type.code(),
                        _ => 0,
                    });
                    d.extend_from_slice(&[0; 4]);
                    d.extend_from_slice(&r.nexus.relative_port.to_be_bytes());
                    let tid = transport_id(&r.nexus.initiator);
                    d.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    d.extend_from_slice(&tid);
                }
            }
        }
        let len = (d.len() - 8) as u32;
        d[4..8].copy_from_slice(&len.to_be_bytes());
        d
    }
}

/// A scope and type that may be reserved: INVALID FIELD IN CDB (byte 2) otherwise.
fn valid_type(scope: u8, pr_type: u8) -> Result<PrType, Sense> {
    if scope != 0 {
        return Err(Sense::invalid_field_in_cdb(2, Some(7)));
    }
    PrType::from_code(pr_type).ok_or(Sense::invalid_field_in_cdb(2, Some(3)))
}

/// REPORT CAPABILITIES parameter data (SPC-4 6.15.4).
fn report_capabilities(ptpl_c: bool, ptpl_a: bool) -> Vec<u8> {
    vec![
        0x00,
        0x08, // LENGTH
        // CRH 0, SIP_C 0, ATP_C 1, PTPL_C.
        0x04 | u8::from(ptpl_c),
        // TMV 1; ALLOW COMMANDS 011b: TEST UNIT READY through Write Exclusive and
        // Exclusive Access, MODE SENSE and friends through Write Exclusive; PTPL_A.
        0x80 | 0x30 | u8::from(ptpl_c && ptpl_a),
        // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX.
        0x80 | 0x40 | 0x20 | 0x08 | 0x02,
        0x01, // EX_AC_AR
        0x00,
        0x00,
    ]
}

/// The iSCSI TransportID of an initiator port (SPC-4 7.6.4.6): format 01h (name,
/// ",i,0x" and ISID) when the port name has an ISID, else format 00h (name only).
/// Null-terminated and padded to a multiple of four bytes, at least 20 in all.
pub(crate) fn transport_id(initiator: &str) -> Vec<u8> {
    let format: u8 = if initiator.contains(",i,0x") {
        0x40
    } else {
        0x00
    };
    let mut name = initiator.as_bytes().to_vec();
    name.push(0);
    name.resize(name.len().max(20).next_multiple_of(4), 0);
    let mut t = vec![format | 0x05, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

/// The persistent reservations of one logical unit, behind one lock. The fast path
/// (no registrations, no reservation) is a single atomic load.
///
/// With a [`crate::PrCoordinator`] the state carries the cluster version it was
/// committed at. The state lock is only ever held for a few field copies, never across
/// a cluster commit: commands that check for conflicts lock it whenever anything is
/// registered, and [`crate::LogicalUnit::apply_remote_pr`] (which a coordinator may
/// call while a commit of this logical unit is in flight) locks it too. PERSISTENT
/// RESERVE OUTs are serialized by the separate `out` lock, which is held across the
/// commit.
#[derive(Debug, Default)]
pub(crate) struct PersistentReservations {
    state: Mutex<Versioned>,
    /// Something is registered or reserved (`!st.is_empty()`).
    engaged: AtomicBool,
    /// `st.spc2` is set: the I/O path's fast check for the cluster-wide SPC-2
    /// reservation.
    spc2_engaged: AtomicBool,
    /// Serializes PERSISTENT RESERVE OUT with a coordinator, commit included.
    out: Mutex<()>,
}

/// Versions whose unit attentions `apply_remote_pr` raised, kept to raise each
/// version's unit attentions once (see [`PersistentReservations::install_committed`]).
const RECENT_REMOTE: usize = 16;

#[derive(Debug, Default)]
struct Versioned {
    st: PrState,
    /// Cluster version of `st`; 0 without a coordinator or before the first commit.
    version: u64,
    /// The last few versions `install` installed from another node's commit.
    remote: VecDeque<u64>,
}

impl PersistentReservations {
    /// True when a command of this kind, with this CDB, from `n` conflicts.
    /// `spc2_held`: an SPC-2 reservation is held (by anyone), which makes PERSISTENT
    /// RESERVE IN and OUT conflict (SPC-4 5.13.3).
    pub(crate) fn conflicts(
        &self,
        n: &crate::Nexus,
        access: PrAccess,
        cdb: &Cdb,
        spc2_held: bool,
    ) -> bool {
        if access == PrAccess::PersistentReserve && spc2_held {
            return true;
        }
        if !self.engaged.load(Ordering::Acquire) {
            return false;
        }
        let access = match (access, cdb) {
            // SBC-3 table 13: START=1 (no power condition) is allowed.
            (PrAccess::StartStop, Cdb::StartStopUnit { start: true, .. }) => PrAccess::Allowed,
            (a, _) => a,
        };
        self.state.lock().st.conflicts(&ItNexus::of(n), access)
    }

    /// Keeps the fast-path flags in step with `st` (called with the state locked).
    fn set_flags(&self, st: &PrState) {
        self.engaged.store(!st.is_empty(), Ordering::Release);
        self.spc2_engaged
            .store(st.spc2.is_some(), Ordering::Release);
    }

    /// Runs `f` on the state and keeps the fast-path flags in step.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut PrState) -> R) -> R {
        let mut v = self.state.lock();
        let r = f(&mut v.st);
        self.set_flags(&v.st);
        r
    }

    /// True when the installed state has an SPC-2 holder (coordinator only): one
    /// atomic load.
    pub(crate) fn spc2_held(&self) -> bool {
        self.spc2_engaged.load(Ordering::Acquire)
    }

    /// True when a command of this access kind from `n` conflicts with the SPC-2
    /// reservation of the installed state (coordinator only). One atomic load while
    /// nobody holds it.
    pub(crate) fn spc2_conflicts(&self, n: &crate::Nexus, access: crate::commands::Access) -> bool {
        if access == crate::commands::Access::NoConflict || !self.spc2_held() {
            return false;
        }
        matches!(&self.state.lock().st.spc2,
            Some(h) if h.initiator != n.initiator || h.relative_port != n.relative_port)
    }

    /// Releases the SPC-2 reservation in the installed state at once, without a
    /// commit and at the same version, when `holder` (or anyone, for `None`) holds
    /// it. Returns the version and the released state to commit in the background
    /// (see `reservation.rs`), or `None` when there was nothing to release.
    pub(crate) fn spc2_release_local(&self, holder: Option<&ItNexus>) -> Option<(u64, PrState)> {
        let mut v = self.state.lock();
        match &v.st.spc2 {
            Some(h) if holder.is_none_or(|x| x == h) => {}
            _ => return None,
        }
        v.st.spc2 = None;
        self.set_flags(&v.st);
        Some((v.version, v.st.clone()))
    }

    /// A copy of the state.
    pub(crate) fn snapshot(&self) -> PrState {
        self.state.lock().st.clone()
    }

    /// A copy of the state and its cluster version.
    pub(crate) fn versioned(&self) -> (PrState, u64) {
        let v = self.state.lock();
        (v.st.clone(), v.version)
    }

    /// The cluster version of the state.
    pub(crate) fn version(&self) -> u64 {
        self.state.lock().version
    }

    /// Holds off other PERSISTENT RESERVE OUTs of this logical unit (across a commit).
    pub(crate) fn serialize_out(&self) -> MutexGuard<'_, ()> {
        self.out.lock()
    }

    /// Replaces the state and its version, whatever was installed.
    pub(crate) fn replace(&self, version: u64, st: PrState) {
        let mut v = self.state.lock();
        v.st = st;
        v.version = version;
        v.remote.clear();
        self.set_flags(&v.st);
    }

    /// Installs `st` at `version` when that is newer than what is installed; returns
    /// whether it did. `remote`: another node committed it and the caller raises its
    /// unit attentions.
    pub(crate) fn install(&self, version: u64, st: PrState, remote: bool) -> bool {
        let mut v = self.state.lock();
        self.install_locked(&mut v, version, st, remote)
    }

    fn install_locked(&self, v: &mut Versioned, version: u64, st: PrState, remote: bool) -> bool {
        if version <= v.version {
            return false;
        }
        v.st = st;
        v.version = version;
        if remote {
            if v.remote.len() == RECENT_REMOTE {
                v.remote.pop_front();
            }
            v.remote.push_back(version);
        }
        self.set_flags(&v.st);
        true
    }

    /// Installs what this logical unit committed as `version` (unless something as
    /// new already is) and returns whether the caller raises its unit attentions:
    /// not when `install` already installed this version for the coordinator (which
    /// raised them), yes when it is installed now or was skipped over by a newer one.
    pub(crate) fn install_committed(&self, version: u64, st: PrState) -> bool {
        let mut v = self.state.lock();
        self.install_locked(&mut v, version, st, false) || !v.remote.contains(&version)
    }
}

/// Executes one PERSISTENT RESERVE OUT against the state.
pub(crate) fn execute_out(
    st: &mut PrState,
    n: &ItNexus,
    action: PrOut,
    scope: u8,
    pr_type: u8,
    p: &ProutParams,
) -> Result<Vec<Attention>, PrError> {
    // SPC-4 5.13.3: conflicts while an SPC-2 reservation is held. The logical unit
    // checked that before executing; this checks it again against the state the
    // command is committed on, which another node may have changed since (only ever
    // set with a coordinator).
    if st.spc2.is_some() {
        return Err(PrError::Conflict);
    }
    let registers = matches!(
        action,
        PrOut::Register | PrOut::RegisterAndIgnore | PrOut::RegisterAndMove
    );
    let out = match action {
        PrOut::Register => st.register(n, p, false),
        PrOut::RegisterAndIgnore => st.register(n, p, true),
        PrOut::RegisterAndMove => st.register_and_move(n, p),
        PrOut::Reserve => st.reserve(n, p, scope, pr_type),
        PrOut::Release => st.release(n, p, scope, pr_type),
        PrOut::Clear => st.clear(n, p),
        // The abort half of PREEMPT AND ABORT is the logical unit's drain of the writes
        // in flight (`LogicalUnit::persistent_reserve_out`, `write_drain.rs`).
        PrOut::Preempt | PrOut::PreemptAndAbort => st.preempt(n, p, scope, pr_type),
    };
    // SPC-4 5.13.5: the APTPL bit of the last register action decides what persists.
    if registers && out.is_ok() {
        st.aptpl = p.aptpl;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it(i: u8) -> ItNexus {
        ItNexus {
            initiator: format!("iqn.x:{i},i,0x0{i}"),
            relative_port: 1,
        }
    }

    fn params(key: u64, sa_key: u64) -> ProutParams {
        ProutParams {
            key,
            sa_key,
            all_tg_pt: false,
            aptpl: false,
            mv: None,
        }
    }

    #[test]
    fn parameter_list_checks() {
        let mut p = [0u8; 24];
        p[7] = 1;
        p[15] = 2;
        let ok = ProutParams::parse(PrOut::Register, 24, &p, false).unwrap();
        assert_eq!((ok.key, ok.sa_key), (1, 2));
        for len in [0, 23, 25, 32] {
            assert_eq!(
                ProutParams::parse(PrOut::Register, len, &[0; 32], false).unwrap_err(),
                Sense::parameter_list_length_error()
            );
        }
        p[20] = 0x08;
        let e = ProutParams::parse(PrOut::Register, 24, &p, false).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x26, 20));
        p[20] = 0x01;
        assert_eq!(
            ProutParams::parse(PrOut::RegisterAndIgnore, 24, &p, false)
                .unwrap_err()
                .asc,
            0x26
        );
        assert!(
            ProutParams::parse(PrOut::Reserve, 24, &p, false).is_ok(),
            "APTPL ignored"
        );
        p[20] = 0x04;
        assert!(
            ProutParams::parse(PrOut::Register, 24, &p, false)
                .unwrap()
                .all_tg_pt
        );
    }

    #[test]
    fn transport_id_format() {
        let t = transport_id("iqn.x:a,i,0x023d00000001");
        assert_eq!(t[0], 0x45);
        assert_eq!(usize::from(u16::from_be_bytes([t[2], t[3]])), t.len() - 4);
        assert_eq!(t.len() % 4, 0);
        assert_eq!(&t[4..28], b"iqn.x:a,i,0x023d00000001");
        assert_eq!(t[28], 0);
        let t = transport_id("iqn.y");
        assert_eq!((t[0], t.len()), (0x05, 24), "ADDITIONAL LENGTH at least 20");
    }

    #[test]
    fn preempt_of_an_all_registrants_reservation_with_key_zero() {
        let mut st = PrState::default();
        for i in 1..=3 {
            st.register(&it(i), &params(0, u64::from(i)), false)
                .unwrap();
        }
        st.reserve(&it(1), &params(1, 0), 0, 7).unwrap();
        let uas = st.preempt(&it(2), &params(2, 0), 0, 1).unwrap();
        assert_eq!(uas.len(), 2);
        assert!(uas
            .iter()
            .all(|(_, s)| *s == Sense::registrations_preempted()));
        assert_eq!(st.registrations.len(), 1);
        assert_eq!(
            st.reservation,
            Some(Reservation {
                holder: it(2),
                pr_type: PrType::WriteExclusive
            })
        );
    }

    #[test]
    fn preempt_of_the_holder_changing_type_releases_for_the_rest() {
        let mut st = PrState::default();
        for i in 1..=3 {
            st.register(&it(i), &params(0, u64::from(i)), false)
                .unwrap();
        }
        st.reserve(&it(1), &params(1, 0), 0, 5).unwrap();
        let uas = st.preempt(&it(2), &params(2, 1), 0, 6).unwrap();
        assert!(uas.contains(&(it(1), Sense::registrations_preempted())));
        assert!(uas.contains(&(it(3), Sense::reservations_released())));
        assert_eq!(uas.len(), 2);
        assert!(st.is_holder(&it(2)));
        // A key nobody has: conflict, and nothing changes.
        let before = st.clone();
        assert_eq!(
            st.preempt(&it(2), &params(2, 99), 0, 6),
            Err(PrError::Conflict)
        );
        assert_eq!(st, before);
        // Invalid type when a reservation would be made.
        let e = st.preempt(&it(2), &params(2, 2), 0, 2).unwrap_err();
        assert!(matches!(e, PrError::Sense(s) if s.asc == 0x24));
    }
}
