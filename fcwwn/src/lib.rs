//! Storage names for switchyard, and who may see what.
//!
//! - [`wwn`]: FC World Wide Names / NAA identifiers ([`Wwn`], NAA 1, 2, 3, 5, 6).
//! - [`iscsi_name`]: iSCSI names ([`IscsiName`]: `iqn.`, `eui.`, `naa.`).
//! - [`initiator`]: an initiator's identity ([`InitiatorId`]) and named
//!   groups of them ([`InitiatorGroup`]).
//! - [`lun_set`]: sets of LUN numbers ([`LunSet`]).
//! - [`zoning`]: the masking model ([`Masking`]) the iSCSI layer asks at login
//!   ([`Masking::may_login`]) and when it builds a session's LUN map
//!   ([`Masking::visible_luns`]).
//!
//! Parsing and formatting only: no I/O. Every type serialises as the strings
//! admins write in TOML configs, and parses back to the same value.
//!
//! ```
//! use fcwwn::{AccessRule, InitiatorId, LunSet, Masking, Wwn};
//!
//! let lu = Wwn::naa6_from(0x001405, 7, 42).unwrap();
//! assert_eq!(lu.to_string(), "naa.6001405000000007000000000000002a");
//!
//! let host: InitiatorId = "iqn.1994-05.com.redhat:host1".parse().unwrap();
//! let target = "iqn.2024-01.io.switchyard:vol1";
//! let masking = Masking::new(
//!     vec![],
//!     vec![AccessRule::initiator(target, host.clone(), LunSet::only([0, 1]))],
//! )
//! .unwrap();
//! assert!(masking.may_login(&host, target));
//! assert_eq!(masking.visible_luns(&host, target).filter(0..4), [0, 1]);
//! let other: InitiatorId = "21:00:00:24:ff:4b:9c:10".parse().unwrap();
//! assert!(!masking.may_login(&other, target));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod initiator;
pub mod iscsi_name;
pub mod lun_set;
pub mod wwn;
pub mod zoning;

pub use initiator::{InitiatorGroup, InitiatorId, InitiatorIdError};
pub use iscsi_name::{IscsiName, IscsiNameError, IscsiNameKind, MAX_NAME_LEN};
pub use lun_set::{Lun, LunSet};
pub use wwn::{Naa, Wwn, WwnError};
pub use zoning::{AccessRule, Masking, MaskingError, Subject};
