//! iSCSI wire formats (RFC 7143) for switchyard, with no I/O and no async runtime.
//!
//! This crate owns the bytes on the wire and the pure rules around them:
//!
//! - [`bhs`]: the 48-byte Basic Header Segment, opcodes and frame lengths (RFC 7143 §11.2);
//! - [`pdu`]: typed request/response PDUs, their parsers and encoders (RFC 7143 §11);
//! - [`digest`]: CRC32C header and data digests (RFC 7143 §13.1);
//! - [`text`]: login/text `key=value` data segments (RFC 7143 §6.1);
//! - [`negotiate`]: operational parameter negotiation, target side (RFC 7143 §6, §13);
//! - [`chap`]: CHAP authentication with MD5 (RFC 1994, RFC 7143 §12.1.3);
//! - [`lun`]: SAM-5 LUN address encoding.
//!
//! The tokio target and the back-end initiator live in the `iscsi` crate.
#![forbid(unsafe_code)]

pub mod bhs;
pub mod chap;
pub mod digest;
pub mod lun;
pub mod negotiate;
pub mod pdu;
pub mod text;

pub use bhs::{Bhs, Opcode, BHS_LEN};
pub use digest::Digests;
pub use pdu::{
    decode_frame, parse_request, parse_request_bytes, parse_response, parse_response_bytes,
    PduError, RawPdu, Request, Response,
};
