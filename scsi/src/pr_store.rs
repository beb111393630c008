//! Persistent reservations that persist through power loss (APTPL, SPC-4 5.13.5):
//! a [`PrSnapshot`] of one logical unit's registrations and reservation, the
//! [`PrStore`] trait that saves and loads it, an in-memory store for tests and a file
//! store that replaces its file atomically (write a temporary file, fsync, rename,
//! fsync the directory).
//!
//! The file format is a few lines of text, readable by an admin:
//!
//! ```text
//! switchyard-pr v1
//! generation 7
//! aptpl 1
//! reg 00000000000000ab 1 0 iqn.1994-05.com.redhat:h1,i,0x00023d000001
//! res 5 1 iqn.1994-05.com.redhat:h1,i,0x00023d000001
//! end crc32 1c291ca3
//! ```
//!
//! `reg` is key (hex), relative target port, ALL_TG_PT, initiator port name; `res` is
//! type, relative target port, initiator port name of the holder. Names are escaped
//! (`%XX` for bytes outside 21h..7Eh and for `%`). The CRC-32 covers every byte before
//! the `end` line. A file that does not parse or whose checksum is wrong is an error:
//! the logical unit does not start rather than silently dropping reservations.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::pr::{ItNexus, PrState, PrType, Registration, Reservation};

const MAGIC: &str = "switchyard-pr v1";

/// One registration as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrRegistration {
    /// Initiator port name ("<iSCSI name>,i,0x<ISID>").
    pub initiator: String,
    pub relative_port: u16,
    pub key: u64,
    pub all_tg_pt: bool,
}

/// The reservation as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrHolder {
    pub initiator: String,
    pub relative_port: u16,
    /// TYPE code (SPC-4 table 188): 1, 3, 5, 6, 7 or 8.
    pub pr_type: u8,
}

/// The I_T nexus that holds the SPC-2 reservation (RESERVE(6)/RESERVE(10)), named
/// cluster-wide by initiator port and relative target port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spc2Holder {
    /// Initiator port name ("<iSCSI name>,i,0x<ISID>").
    pub initiator: String,
    /// Relative target port identifier (unique across nodes).
    pub relative_port: u16,
}

/// The persistent reservation state of one logical unit, as saved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrSnapshot {
    pub generation: u32,
    /// The last APTPL bit received. A [`PrStore`] snapshot with `aptpl` false is not
    /// restored; a [`crate::PrCoordinator`]'s is (the cluster is the store).
    pub aptpl: bool,
    pub registrations: Vec<PrRegistration>,
    pub reservation: Option<PrHolder>,
    /// The SPC-2 reservation holder, shared through a [`crate::PrCoordinator`] so
    /// that every node enforces it; always `None` without one (the logical unit then
    /// keeps it by local nexus). Not part of the file format: SPC-2 reservations do
    /// not persist through power loss, so [`PrSnapshot::encode`] leaves it out and
    /// [`PrSnapshot::decode`] gives `None`.
    pub spc2_reservation: Option<Spc2Holder>,
}

/// Why a persistent reservation store failed.
#[derive(Debug, thiserror::Error)]
pub enum PrStoreError {
    #[error("persistent reservation file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "persistent reservation file {path} is corrupt ({reason}); the logical unit is not \
         started so that no reservation is silently dropped: restore the file from a \
         backup or, to drop every registration, delete it"
    )]
    Corrupt { path: String, reason: String },
}

/// Where one logical unit's persistent reservations are kept across restarts.
pub trait PrStore: Send + Sync + std::fmt::Debug {
    /// The saved snapshot; `None` when nothing was ever saved.
    fn load(&self) -> Result<Option<PrSnapshot>, PrStoreError>;
    /// Replaces the saved snapshot; when this returns Ok it survives a power loss.
    fn save(&self, snapshot: &PrSnapshot) -> Result<(), PrStoreError>;
    /// Where it is kept, for messages.
    fn location(&self) -> String {
        format!("{self:?}")
    }
}

/// A store in memory (tests; a restart is simulated by sharing it between two
/// logical units).
#[derive(Debug, Default)]
pub struct MemPrStore {
    saved: Mutex<Option<Vec<u8>>>,
}

impl MemPrStore {
    /// The encoded bytes last saved.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        self.saved.lock().clone()
    }

    /// Replaces the saved bytes (to simulate corruption).
    pub fn set_bytes(&self, bytes: Vec<u8>) {
        *self.saved.lock() = Some(bytes);
    }
}

impl PrStore for MemPrStore {
    fn load(&self) -> Result<Option<PrSnapshot>, PrStoreError> {
        match &*self.saved.lock() {
            None => Ok(None),
            Some(b) => PrSnapshot::decode(b)
                .map(Some)
                .map_err(|reason| PrStoreError::Corrupt {
                    path: "(memory)".into(),
                    reason,
                }),
        }
    }

    fn save(&self, snapshot: &PrSnapshot) -> Result<(), PrStoreError> {
        *self.saved.lock() = Some(snapshot.encode());
        Ok(())
    }
}

/// A store in one file, e.g. `<data_dir>/<lun-file>.pr`.
#[derive(Debug, Clone)]
pub struct FilePrStore {
    path: PathBuf,
}

impl FilePrStore {
    pub fn new(path: impl Into<PathBuf>) -> FilePrStore {
        FilePrStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> PrStoreError {
        PrStoreError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn temp_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        self.path.with_file_name(name)
    }
}

impl PrStore for FilePrStore {
    fn load(&self) -> Result<Option<PrSnapshot>, PrStoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        PrSnapshot::decode(&bytes)
            .map(Some)
            .map_err(|reason| PrStoreError::Corrupt {
                path: self.path.display().to_string(),
                reason,
            })
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn save(&self, snapshot: &PrSnapshot) -> Result<(), PrStoreError> {
        let tmp = self.temp_path();
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(&snapshot.encode()).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        // The rename is durable once the directory is.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))
    }
}

impl PrSnapshot {
    /// The file format above.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::new();
        let _ = writeln!(s, "{MAGIC}");
        let _ = writeln!(s, "generation {}", self.generation);
        let _ = writeln!(s, "aptpl {}", u8::from(self.aptpl));
        for r in &self.registrations {
            let _ = writeln!(
                s,
                "reg {:016x} {} {} {}",
                r.key,
                r.relative_port,
                u8::from(r.all_tg_pt),
                escape(&r.initiator)
            );
        }
        if let Some(h) = &self.reservation {
            let _ = writeln!(
                s,
                "res {} {} {}",
                h.pr_type,
                h.relative_port,
                escape(&h.initiator)
            );
        }
        let crc = crc32(s.as_bytes());
        let _ = writeln!(s, "end crc32 {crc:08x}");
        s.into_bytes()
    }

    /// Parses the file format; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<PrSnapshot, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or("truncated: no end line")?;
        let (body, end) = text.split_at(body_end);
        let want = end
            .trim_end()
            .strip_prefix("end crc32 ")
            .ok_or("truncated: no end line")?;
        let want = u32::from_str_radix(want, 16).map_err(|_| "bad checksum field")?;
        let got = crc32(body.as_bytes());
        if want != got {
            return Err(format!(
                "checksum mismatch (file says {want:08x}, contents give {got:08x})"
            ));
        }
        let mut lines = body.lines().enumerate();
        match lines.next() {
            Some((_, MAGIC)) => {}
            Some((_, l)) if l.starts_with("switchyard-pr ") => {
                return Err(format!(
                    "format {l:?} is not known: written by a newer switchyard?"
                ))
            }
            _ => return Err("not a switchyard persistent reservation file".into()),
        }
        let mut snap = PrSnapshot::default();
        for (n, line) in lines {
            let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["generation", g] => snap.generation = g.parse().map_err(|_| bad("generation"))?,
                ["aptpl", a] => snap.aptpl = flag(a).ok_or_else(|| bad("aptpl"))?,
                ["reg", key, port, atp, name] => snap.registrations.push(PrRegistration {
                    key: u64::from_str_radix(key, 16).map_err(|_| bad("key"))?,
                    relative_port: port.parse().map_err(|_| bad("relative port"))?,
                    all_tg_pt: flag(atp).ok_or_else(|| bad("all_tg_pt"))?,
                    initiator: unescape(name).ok_or_else(|| bad("initiator"))?,
                }),
                ["res", t, port, name] if snap.reservation.is_none() => {
                    snap.reservation = Some(PrHolder {
                        pr_type: t.parse().map_err(|_| bad("type"))?,
                        relative_port: port.parse().map_err(|_| bad("relative port"))?,
                        initiator: unescape(name).ok_or_else(|| bad("initiator"))?,
                    })
                }
                _ => return Err(bad("unexpected line")),
            }
        }
        Ok(snap)
    }

    /// Checks that the snapshot is consistent (no nexus registered twice, a valid
    /// reservation type, the holder registered), as a logical unit requires to
    /// install it; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        self.to_state().map(|_| ())
    }

    pub(crate) fn of(st: &PrState) -> PrSnapshot {
        PrSnapshot {
            generation: st.generation,
            aptpl: st.aptpl,
            registrations: st
                .registrations
                .iter()
                .map(|r| PrRegistration {
                    initiator: r.nexus.initiator.clone(),
                    relative_port: r.nexus.relative_port,
                    key: r.key,
                    all_tg_pt: r.all_tg_pt,
                })
                .collect(),
            reservation: st.reservation.as_ref().map(|r| PrHolder {
                initiator: r.holder.initiator.clone(),
                relative_port: r.holder.relative_port,
                pr_type: r.pr_type as u8,
            }),
            spc2_reservation: st.spc2.as_ref().map(|n| Spc2Holder {
                initiator: n.initiator.clone(),
                relative_port: n.relative_port,
            }),
        }
    }

    /// The state to restore; an inconsistent snapshot is an error.
    pub(crate) fn to_state(&self) -> Result<PrState, String> {
        let mut st = PrState {
            generation: self.generation,
            aptpl: self.aptpl,
            // SPC-2 RESERVE conflicts while anything is registered and PERSISTENT
            // RESERVE OUT while an SPC-2 reservation is held (SPC-4 5.13.3), so the
            // two never coexist; not checked here all the same, so that a cluster
            // state that got there is still installed everywhere alike.
            spc2: self.spc2_reservation.as_ref().map(|h| ItNexus {
                initiator: h.initiator.clone(),
                relative_port: h.relative_port,
            }),
            ..PrState::default()
        };
        for r in &self.registrations {
            let nexus = ItNexus {
                initiator: r.initiator.clone(),
                relative_port: r.relative_port,
            };
            if st.registrations.iter().any(|x| x.nexus == nexus) {
                return Err(format!("{} is registered twice", r.initiator));
            }
            st.registrations.push(Registration {
                nexus,
                key: r.key,
                all_tg_pt: r.all_tg_pt,
            });
        }
        if let Some(h) = &self.reservation {
            let pr_type = PrType::from_code(h.pr_type)
                .ok_or_else(|| format!("reservation type {} is not valid", h.pr_type))?;
            let holder = ItNexus {
                initiator: h.initiator.clone(),
                relative_port: h.relative_port,
            };
            // An all-registrants reservation outlives the registration of the nexus
            // that made it (SPC-4 5.13.11.2): its recorded holder may be unregistered.
            if pr_type.all_registrants() && st.registrations.is_empty() {
                return Err("an all-registrants reservation without registrants".into());
            }
            if !pr_type.all_registrants() && !st.registrations.iter().any(|r| r.nexus == holder) {
                return Err(format!(
                    "the reservation holder {} is not registered",
                    h.initiator
                ));
            }
            st.reservation = Some(Reservation { holder, pr_type });
        }
        Ok(st)
    }
}

fn flag(s: &str) -> Option<bool> {
    match s {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..=0x7E).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's crc32).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PrSnapshot {
        PrSnapshot {
            generation: 7,
            aptpl: true,
            registrations: vec![
                PrRegistration {
                    initiator: "iqn.1994-05.com.redhat:h1,i,0x00023d000001".into(),
                    relative_port: 1,
                    key: 0xAB,
                    all_tg_pt: false,
                },
                PrRegistration {
                    initiator: "odd name 100%\n,i,0x1".into(),
                    relative_port: 2,
                    key: u64::MAX,
                    all_tg_pt: true,
                },
            ],
            reservation: Some(PrHolder {
                initiator: "iqn.1994-05.com.redhat:h1,i,0x00023d000001".into(),
                relative_port: 1,
                pr_type: 5,
            }),
            spc2_reservation: None,
        }
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn encode_decode_round_trip() {
        let s = sample();
        let bytes = s.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("switchyard-pr v1\ngeneration 7\naptpl 1\n"));
        assert!(
            text.contains("reg 00000000000000ab 1 0 iqn.1994-05.com.redhat:h1,i,0x00023d000001\n")
        );
        assert!(text.contains("odd%20name%20100%25%0A,i,0x1"), "{text}");
        assert_eq!(PrSnapshot::decode(&bytes).unwrap(), s);
        let st = s.to_state().unwrap();
        assert_eq!(PrSnapshot::of(&st), s);
    }

    #[test]
    fn the_spc2_holder_is_not_saved() {
        let mut s = sample();
        s.spc2_reservation = Some(Spc2Holder {
            initiator: "iqn.x:h,i,0x1".into(),
            relative_port: 17,
        });
        assert_eq!(s.encode(), sample().encode(), "file format unchanged");
        assert_eq!(PrSnapshot::decode(&s.encode()).unwrap(), sample());
        // The cluster carries it through the state a logical unit installs.
        assert_eq!(PrSnapshot::of(&s.to_state().unwrap()), s);
    }

    #[test]
    fn an_all_registrants_reservation_outlives_its_creators_registration() {
        let mut s = sample();
        let creator = "iqn.2026-11.org.x:gone,i,0x1".to_string();
        s.reservation = Some(PrHolder {
            initiator: creator,
            relative_port: 1,
            pr_type: 7,
        });
        assert!(s.to_state().is_ok(), "WEAR holder need not be registered");
        s.reservation.as_mut().unwrap().pr_type = 1;
        assert!(s.to_state().unwrap_err().contains("not registered"));
        s.reservation.as_mut().unwrap().pr_type = 8;
        s.registrations.clear();
        assert!(s.to_state().is_err(), "EAAR needs a registrant");
    }

    #[test]
    fn corruption_is_detected() {
        let good = sample().encode();
        // A flipped character in the body.
        let mut bad = good.clone();
        bad[20] ^= 0x01;
        assert!(PrSnapshot::decode(&bad).unwrap_err().contains("checksum"));
        // Truncated.
        let e = PrSnapshot::decode(&good[..good.len() / 2]).unwrap_err();
        assert!(e.contains("end line") || e.contains("checksum"), "{e}");
        assert!(PrSnapshot::decode(b"").is_err());
        // A newer format with a valid checksum.
        let body = "switchyard-pr v2\n";
        let v2 = format!("{body}end crc32 {:08x}\n", crc32(body.as_bytes()));
        assert!(PrSnapshot::decode(v2.as_bytes())
            .unwrap_err()
            .contains("newer"));
        // Consistent checksum, inconsistent contents: a holder that is not registered.
        let mut s = sample();
        s.registrations.remove(0);
        let e = PrSnapshot::decode(&s.encode())
            .unwrap()
            .to_state()
            .unwrap_err();
        assert!(e.contains("not registered"), "{e}");
        s.reservation.as_mut().unwrap().pr_type = 2;
        s.reservation.as_mut().unwrap().initiator = "odd name 100%\n,i,0x1".into();
        s.reservation.as_mut().unwrap().relative_port = 2;
        assert!(s.to_state().unwrap_err().contains("type 2"));
    }

    #[test]
    fn file_store_saves_atomically_and_reports_corruption() {
        let dir = std::env::temp_dir().join(format!("sy-pr-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let store = FilePrStore::new(dir.join("lun0.pr"));
        assert!(
            store.load().unwrap().is_none(),
            "missing file: nothing saved"
        );
        store.save(&sample()).unwrap();
        assert!(!store.temp_path().exists(), "temporary file renamed away");
        assert_eq!(store.load().unwrap(), Some(sample()));
        let mut s = sample();
        s.generation = 8;
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap().unwrap().generation, 8);
        let mut bytes = fs::read(store.path()).unwrap();
        bytes.truncate(bytes.len() - 3);
        fs::write(store.path(), &bytes).unwrap();
        let e = store.load().unwrap_err();
        assert!(matches!(e, PrStoreError::Corrupt { .. }));
        assert!(e.to_string().contains("lun0.pr"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
