//! PDU framing: a tokio-util decoder that waits for a whole PDU (header, AHS, data,
//! padding, digests), bounded by the negotiated MaxRecvDataSegmentLength, checks the
//! digests and hands complete frames to the (non-streaming) parsers of `iscsi-wire`.

use bytes::{Buf, Bytes, BytesMut};
use iscsi_wire::bhs::BHS_LEN;
use tokio_util::codec::Decoder;

/// One received PDU, split into its parts, digests already verified and removed.
#[derive(Debug, Clone)]
pub struct Frame {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
    /// The data digest did not match: the PDU is framed correctly but its data must
    /// be discarded (a decoder error would end the stream, so it is a flag).
    pub data_digest_error: bool,
}

/// Why a frame could not be read. Header problems lose the framing, so the connection
/// must close; a data digest error drops only the PDU (RFC 7143 §7.8 at ERL 0).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")]
    DataTooLong {
        len: usize,
        max: usize,
        bhs: Box<[u8; BHS_LEN]>,
    },
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Decoder state: the digests and data limit in force on this connection.
#[derive(Debug, Clone)]
pub struct PduCodec {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Our declared MaxRecvDataSegmentLength (8192 during login).
    pub max_data: usize,
}

impl PduCodec {
    pub fn new(max_data: usize) -> PduCodec {
        PduCodec {
            header_digest: false,
            data_digest: false,
            max_data,
        }
    }
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

impl Decoder for PduCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < BHS_LEN {
            src.reserve(BHS_LEN);
            return Ok(None);
        }
        let ahs_len = src[4] as usize * 4;
        let data_len = u32::from_be_bytes([0, src[5], src[6], src[7]]) as usize;
        let hd = if self.header_digest { 4 } else { 0 };
        if data_len > self.max_data {
            let mut bhs = [0u8; BHS_LEN];
            bhs.copy_from_slice(&src[..BHS_LEN]);
            return Err(FrameError::DataTooLong {
                len: data_len,
                max: self.max_data,
                bhs: Box::new(bhs),
            });
        }
        let dd = if self.data_digest && data_len > 0 {
            4
        } else {
            0
        };
        let total = BHS_LEN + ahs_len + hd + pad4(data_len) + dd;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(total);
        if self.header_digest {
            let want = crc32c::crc32c(&frame[..BHS_LEN + ahs_len]);
            let got = u32::from_le_bytes(
                frame[BHS_LEN + ahs_len..BHS_LEN + ahs_len + 4]
                    .try_into()
                    .expect("4 bytes"),
            );
            if want != got {
                return Err(FrameError::HeaderDigest);
            }
        }
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&frame[..BHS_LEN]);
        frame.advance(BHS_LEN);
        let ahs = frame.split_to(ahs_len).freeze();
        frame.advance(hd);
        let mut data_digest_error = false;
        if dd == 4 {
            let padded = pad4(data_len);
            let want = crc32c::crc32c(&frame[..padded]);
            let got = u32::from_le_bytes(frame[padded..padded + 4].try_into().expect("4 bytes"));
            data_digest_error = want != got;
        }
        let data = frame.split_to(data_len).freeze();
        Ok(Some(Frame {
            bhs,
            ahs,
            data,
            data_digest_error,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(data: &[u8], hd: bool, dd: bool) -> BytesMut {
        let mut b = BytesMut::new();
        let mut bhs = [0u8; 48];
        bhs[0] = 0x01;
        let l = data.len() as u32;
        bhs[5..8].copy_from_slice(&l.to_be_bytes()[1..]);
        b.extend_from_slice(&bhs);
        if hd {
            b.extend_from_slice(&crc32c::crc32c(&bhs).to_le_bytes());
        }
        let mut padded = data.to_vec();
        padded.resize(pad4(data.len()), 0);
        b.extend_from_slice(&padded);
        if dd && !data.is_empty() {
            b.extend_from_slice(&crc32c::crc32c(&padded).to_le_bytes());
        }
        b
    }

    #[test]
    fn decodes_whole_frames_only() {
        let mut c = PduCodec::new(8192);
        let full = pdu(b"hello", false, false);
        let mut part = BytesMut::from(&full[..50]);
        assert!(c.decode(&mut part).unwrap().is_none());
        part.extend_from_slice(&full[50..]);
        let f = c.decode(&mut part).unwrap().unwrap();
        assert_eq!(&f.data[..], b"hello");
        assert!(part.is_empty());
    }

    #[test]
    fn digests_verified() {
        let mut c = PduCodec::new(8192);
        c.header_digest = true;
        c.data_digest = true;
        let mut ok = pdu(b"abcdefg", true, true);
        assert_eq!(&c.decode(&mut ok).unwrap().unwrap().data[..], b"abcdefg");
        let mut bad = pdu(b"abcdefg", true, true);
        bad[60] ^= 1;
        let f = c.decode(&mut bad).unwrap().unwrap();
        assert!(f.data_digest_error);
        assert!(bad.is_empty(), "the bad PDU is consumed whole");
        let mut badh = pdu(b"abcdefg", true, true);
        badh[10] ^= 1;
        assert!(matches!(c.decode(&mut badh), Err(FrameError::HeaderDigest)));
    }

    #[test]
    fn oversized_segment_refused_before_buffering() {
        let mut c = PduCodec::new(1024);
        let mut b = pdu(&[0u8; 2048][..], false, false);
        b.truncate(60);
        assert!(matches!(
            c.decode(&mut b),
            Err(FrameError::DataTooLong { len: 2048, .. })
        ));
    }
}
