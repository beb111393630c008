//! PERSISTENT RESERVE OUT with REGISTER AND MOVE (SPC-4 5.13.8, 6.16.4): the holder of
//! a reservation registers another I_T nexus, named by a TransportID and a relative
//! target port identifier, and moves the reservation to it.

use crate::pr::{Attention, ItNexus, PrError, PrState, ProutParams, Registration};
use crate::sense::Sense;

/// Offset of the TransportID in the REGISTER AND MOVE parameter list.
const TID_AT: usize = 24;

/// The destination of a REGISTER AND MOVE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MoveTarget {
    pub(crate) nexus: ItNexus,
    /// UNREG: unregister the issuing I_T nexus after the move.
    pub(crate) unreg: bool,
}

/// Parses the REGISTER AND MOVE parameter list (SPC-4 6.16.4, table 196): keys,
/// UNREG and APTPL (byte 17), RELATIVE TARGET PORT IDENTIFIER (18..20), TRANSPORTID
/// PARAMETER DATA LENGTH (20..24) and the TransportID.
pub(crate) fn parse(param_len: u32, data: &[u8]) -> Result<ProutParams, Sense> {
    let len = param_len as usize;
    if len < TID_AT || data.len() < len {
        return Err(Sense::parameter_list_length_error());
    }
    let data = &data[..len];
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[o..o + 8]);
        u64::from_be_bytes(b)
    };
    let flags = data[17];
    let relative_port = u16::from_be_bytes([data[18], data[19]]);
    let tid_len = u32::from_be_bytes([data[20], data[21], data[22], data[23]]) as usize;
    if TID_AT.checked_add(tid_len) != Some(len) {
        return Err(Sense::parameter_list_length_error());
    }
    if relative_port == 0 {
        return Err(Sense::invalid_field_in_param_list(18, None));
    }
    let initiator = parse_iscsi_transport_id(&data[TID_AT..])?;
    Ok(ProutParams {
        key: u64_at(0),
        sa_key: u64_at(8),
        all_tg_pt: false,
        aptpl: flags & 0x01 != 0,
        mv: Some(MoveTarget {
            nexus: ItNexus {
                initiator,
                relative_port,
            },
            unreg: flags & 0x02 != 0,
        }),
    })
}

/// An iSCSI TransportID in format 01h (SPC-4 7.6.4.6: "<name>,i,0x<ISID>", NUL
/// terminated, padded to a multiple of four) → the initiator port name, lower case as
/// the iSCSI layer spells it. Format 00h names an initiator device, not a port, and is
/// refused: a registration belongs to a port. Field pointers are into the parameter
/// list.
pub(crate) fn parse_iscsi_transport_id(tid: &[u8]) -> Result<String, Sense> {
    let bad = |byte: usize, bit: Option<u8>| {
        Sense::invalid_field_in_param_list((TID_AT + byte) as u16, bit)
    };
    if tid.len() < 24 {
        return Err(bad(0, None));
    }
    // PROTOCOL IDENTIFIER 5h (iSCSI), FORMAT CODE 01b.
    if tid[0] & 0x0F != 0x5 {
        return Err(bad(0, Some(3)));
    }
    if tid[0] >> 6 != 0x1 {
        return Err(bad(0, Some(7)));
    }
    let addl = usize::from(u16::from_be_bytes([tid[2], tid[3]]));
    if addl % 4 != 0 || addl < 20 || 4 + addl != tid.len() {
        return Err(bad(2, None));
    }
    let body = &tid[4..];
    let nul = body.iter().position(|&b| b == 0).ok_or(bad(4, None))?;
    let port = std::str::from_utf8(&body[..nul])
        .map_err(|_| bad(4, None))?
        .to_ascii_lowercase();
    let (name, isid) = port.split_once(",i,0x").ok_or(bad(4, None))?;
    if name.is_empty() || isid.len() != 12 || !isid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(4, None));
    }
    Ok(port)
}

impl PrState {
    /// REGISTER AND MOVE (SPC-4 5.13.8): the issuer must be registered with `key` and
    /// hold a reservation that is not of an all-registrants type; the destination is
    /// registered with the service action key (its key replaced if it was
    /// registered), becomes the holder with the same type and scope, and with UNREG
    /// the issuer is unregistered. Raises no unit attentions.
    pub(crate) fn register_and_move(
        &mut self,
        n: &ItNexus,
        p: &ProutParams,
    ) -> Result<Vec<Attention>, PrError> {
        let Some(mv) = &p.mv else {
            return Err(Sense::invalid_field_in_param_list(TID_AT as u16, None).into());
        };
        match self.registrations.iter().find(|r| r.nexus == *n) {
            Some(r) if r.key == p.key => {}
            _ => return Err(PrError::Conflict),
        }
        if p.sa_key == 0 {
            return Err(Sense::invalid_field_in_param_list(8, None).into());
        }
        // The destination must be another initiator port.
        if mv.nexus.initiator == n.initiator {
            return Err(Sense::invalid_field_in_param_list(TID_AT as u16, None).into());
        }
        let Some(res) = self.reservation.clone() else {
            // As LIO: nothing to move.
            return Err(Sense::invalid_field_in_cdb(2, None).into());
        };
        if !self.is_holder(n) || res.pr_type.all_registrants() {
            return Err(PrError::Conflict);
        }
        match self.registrations.iter_mut().find(|r| r.nexus == mv.nexus) {
            Some(r) => r.key = p.sa_key,
            None => self.registrations.push(Registration {
                nexus: mv.nexus.clone(),
                key: p.sa_key,
                all_tg_pt: false,
            }),
        }
        if let Some(r) = self.reservation.as_mut() {
            r.holder = mv.nexus.clone();
        }
        if mv.unreg {
            self.registrations.retain(|r| r.nexus != *n);
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pr::{transport_id, PrType, Reservation};

    fn it(i: u8) -> ItNexus {
        ItNexus {
            initiator: format!("iqn.x:{i},i,0x00000000000{i}"),
            relative_port: 1,
        }
    }

    fn move_list(key: u64, sa_key: u64, flags: u8, port: u16, tid: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 24];
        d[..8].copy_from_slice(&key.to_be_bytes());
        d[8..16].copy_from_slice(&sa_key.to_be_bytes());
        d[17] = flags;
        d[18..20].copy_from_slice(&port.to_be_bytes());
        d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        d.extend_from_slice(tid);
        d
    }

    #[test]
    fn transport_id_round_trips_and_is_checked() {
        let port = "iqn.1994-05.com.redhat:h2,i,0x00023d000002";
        assert_eq!(parse_iscsi_transport_id(&transport_id(port)).unwrap(), port);
        // Upper case from the initiator is normalised.
        let mut upper = transport_id(port);
        upper[4..].make_ascii_uppercase();
        assert_eq!(parse_iscsi_transport_id(&upper).unwrap(), port);
        // Format 00h (device name only), FC protocol, bad ISID.
        let e = parse_iscsi_transport_id(&transport_id("iqn.x:h")).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x26, 24));
        let mut fc = transport_id(port);
        fc[0] = 0x40;
        assert_eq!(parse_iscsi_transport_id(&fc).unwrap_err().asc, 0x26);
        let short_isid = transport_id("iqn.x:h,i,0x0102");
        assert!(parse_iscsi_transport_id(&short_isid).is_err());
        // ADDITIONAL LENGTH disagreeing with the length given.
        let mut t = transport_id(port);
        t.extend_from_slice(&[0; 4]);
        assert_eq!(
            parse_iscsi_transport_id(&t)
                .unwrap_err()
                .field
                .unwrap()
                .byte,
            26
        );
    }

    #[test]
    fn parameter_list_checks() {
        let tid = transport_id(&it(2).initiator);
        let p = parse(24 + tid.len() as u32, &move_list(1, 2, 0x03, 1, &tid)).unwrap();
        assert_eq!((p.key, p.sa_key, p.aptpl), (1, 2, true));
        assert_eq!(
            p.mv,
            Some(MoveTarget {
                nexus: it(2),
                unreg: true
            })
        );
        // Parameter list length must be 24 plus the TransportID.
        let list = move_list(1, 2, 0, 1, &tid);
        for len in [0, 23, 24, list.len() as u32 - 4] {
            assert_eq!(
                parse(len, &list).unwrap_err(),
                Sense::parameter_list_length_error()
            );
        }
        let e = parse(list.len() as u32, &move_list(1, 2, 0, 0, &tid)).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x26, 18));
    }

    fn reserved_by_1(pr_type: PrType) -> PrState {
        let mut st = PrState::default();
        for i in 1..=3 {
            st.registrations.push(Registration {
                nexus: it(i),
                key: u64::from(i),
                all_tg_pt: false,
            });
        }
        st.reservation = Some(Reservation {
            holder: it(1),
            pr_type,
        });
        st
    }

    fn mv(key: u64, sa_key: u64, to: ItNexus, unreg: bool) -> ProutParams {
        ProutParams {
            key,
            sa_key,
            all_tg_pt: false,
            aptpl: false,
            mv: Some(MoveTarget { nexus: to, unreg }),
        }
    }

    #[test]
    fn register_and_move_transitions() {
        // To a new I_T nexus, keeping the issuer registered.
        let mut st = reserved_by_1(PrType::ExclusiveAccess);
        assert_eq!(
            st.register_and_move(&it(1), &mv(1, 9, it(4), false)),
            Ok(vec![])
        );
        assert!(st.is_holder(&it(4)) && !st.is_holder(&it(1)));
        assert_eq!(
            st.reservation.as_ref().unwrap().pr_type,
            PrType::ExclusiveAccess
        );
        assert_eq!(st.registrations.len(), 4);
        assert_eq!(st.registrations[3].key, 9);
        assert_eq!(st.generation, 1);
        // To an already registered nexus with UNREG: its key is replaced, the issuer
        // goes.
        st.register_and_move(&it(4), &mv(9, 7, it(2), true))
            .unwrap();
        assert!(st.is_holder(&it(2)));
        assert!(st.registrations.iter().all(|r| r.nexus != it(4)));
        assert_eq!(
            st.registrations
                .iter()
                .find(|r| r.nexus == it(2))
                .unwrap()
                .key,
            7
        );
    }

    #[test]
    fn register_and_move_refusals() {
        let st0 = reserved_by_1(PrType::WriteExclusive);
        // (issuer, parameters, Ok or (ASC, field byte); (0, 0) is RESERVATION CONFLICT).
        type Case = (ItNexus, ProutParams, Result<(), (u8, u16)>);
        let cases: Vec<Case> = vec![
            // Not the holder, wrong key, unregistered issuer: RESERVATION CONFLICT.
            (it(2), mv(2, 9, it(4), false), Err((0, 0))),
            (it(1), mv(5, 9, it(4), false), Err((0, 0))),
            (it(5), mv(0, 9, it(4), false), Err((0, 0))),
            // Service action key zero.
            (it(1), mv(1, 0, it(4), false), Err((0x26, 8))),
            // Moving to itself (same initiator port, another target port).
            (
                it(1),
                mv(
                    1,
                    9,
                    ItNexus {
                        relative_port: 2,
                        ..it(1)
                    },
                    false,
                ),
                Err((0x26, 24)),
            ),
        ];
        for (who, p, want) in cases {
            let mut st = st0.clone();
            let got = st
                .register_and_move(&who, &p)
                .map(|_| ())
                .map_err(|e| match e {
                    PrError::Conflict => (0, 0),
                    PrError::Sense(s) => (s.asc, s.field.map_or(0, |f| f.byte)),
                });
            assert_eq!(got, want, "{who:?} {p:?}");
            assert_eq!(st, st0, "a refused move changes nothing");
        }
        // All-registrants reservations cannot move; no reservation: INVALID FIELD IN CDB.
        let mut st = reserved_by_1(PrType::WriteExclusiveAllRegistrants);
        assert_eq!(
            st.register_and_move(&it(1), &mv(1, 9, it(4), false)),
            Err(PrError::Conflict)
        );
        st.reservation = None;
        let e = st.register_and_move(&it(1), &mv(1, 9, it(4), false));
        assert!(matches!(e, Err(PrError::Sense(s)) if s.asc == 0x24));
    }
}
