//! COMPARE AND WRITE through a virtual volume is executed by the back-end array, so it
//! is atomic across nodes.
//!
//! One array node (a switchyard process serving a file LU) and two virtualizing nodes
//! (separate processes, like two nodes of a cluster), each mapping the same volume onto
//! the array's LU. Host sessions on both virtualizing nodes increment a counter in one
//! block with COMPARE AND WRITE (compare the value just read, write it plus one), from
//! several sessions at once. Every GOOD compare-and-write must be counted exactly once:
//! at the end the block holds the number of GOOD ones. A node-local read-compare-write
//! (the emulation) lets two nodes both succeed on the same old value and loses updates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use integration_tests::*;

const BS: usize = 512;
const ARRAY: &str = "iqn.2026-11.org.switchyard:array";
const VIRT: &str = "iqn.2026-11.org.switchyard:virtual";
/// The contended block (virtual LBA; the array LBA is `LBA + BSTART`).
const LBA: u64 = 100;
const BSTART: u64 = 1000;
const SESSIONS_PER_NODE: u8 = 3;
const ROUNDS: usize = 40;

async fn session(port: u16, target: &str, isid: u8) -> Initiator {
    let mut i = Initiator::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    i.login(&LoginOpts {
        target: Some(target.into()),
        isid: Some([0x80, 0, 0, 0, 3, isid]),
        ..Default::default()
    })
    .await
    .expect("login");
    i.clear_ua(0).await;
    i
}

fn caw16(lba: u64, blocks: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

/// The block holding counter value `n` (and a recognisable tail).
fn counter_block(n: u64) -> Vec<u8> {
    let mut b = n.to_be_bytes().repeat(BS / 8);
    b[BS - 4..].copy_from_slice(b"CAW!");
    b
}

fn counter_of(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

fn virt_config(dir: &std::path::Path, name: &str, port: u16, array_port: u16) -> String {
    format!(
        "[node]\nname = \"{name}\"\ndata_dir = \"{d}\"\n[[portal]]\nlisten = \"127.0.0.1:{port}\"\n\
         [[backend]]\nid = \"array\"\nportal = \"127.0.0.1:{array_port}\"\ntarget = \"{ARRAY}\"\nsessions = 2\n\
         [mapping]\nepoch = 1\n[[mapping.volumes]]\nname = \"vol1\"\n\
         wwn = \"naa.6005359000000000000000000000c001\"\nblock_size = 512\nblocks = 2048\n\
         [[mapping.volumes.extents]]\nvstart = 0\nblocks = 2048\nbackend = \"array/lun0\"\nbstart = {BSTART}\n\
         [[target]]\nname = \"{VIRT}\"\n[[target.lun]]\nlun = 0\nvolume = \"vol1\"\n",
        d = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_write_through_two_nodes_is_atomic_on_the_array() {
    let dir = tempfile::tempdir().unwrap();
    let (ap, v1, v2) = (free_port(), free_port(), free_port());
    let array_cfg = dir.path().join("array.toml");
    std::fs::write(
        &array_cfg,
        format!(
            "[node]\nname = \"array\"\ndata_dir = \"{d}\"\n[[portal]]\nlisten = \"127.0.0.1:{ap}\"\n\
             [[target]]\nname = \"{ARRAY}\"\n\
             [[target.lun]]\nlun = 0\npath = \"a0.img\"\nsize = \"4MiB\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let _array = NodeProcess::spawn(&array_cfg, None);
    wait_port(ap).await;
    let mut nodes = Vec::new();
    for (name, port) in [("virt1", v1), ("virt2", v2)] {
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, virt_config(dir.path(), name, port, ap)).unwrap();
        nodes.push(NodeProcess::spawn(&cfg, None));
    }
    wait_port(v1).await;
    wait_port(v2).await;

    // Start the counter at 0 through one node; both nodes read it back.
    let mut h = session(v1, VIRT, 0).await;
    assert_eq!(
        h.write10(0, LBA as u32, &counter_block(0), BS).await.status,
        0
    );
    drop(h);

    let good = Arc::new(AtomicU64::new(0));
    let miscompares = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (k, port) in [v1, v2].into_iter().enumerate() {
        for s in 0..SESSIONS_PER_NODE {
            let (good, miscompares) = (good.clone(), miscompares.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = session(port, VIRT, 1 + k as u8 * 16 + s).await;
                for _ in 0..ROUNDS {
                    let r = h.read10(0, LBA as u32, 1, BS).await;
                    assert_eq!(r.status, 0, "read failed: {:02x?}", &r.sense[..]);
                    let n = counter_of(&r.data);
                    assert_eq!(r.data, counter_block(n), "torn counter block");
                    let out = [counter_block(n), counter_block(n + 1)].concat();
                    let r = h.scsi(0, &caw16(LBA, 1), &out, 0).await;
                    match r.status {
                        0 => {
                            good.fetch_add(1, Ordering::SeqCst);
                        }
                        2 => {
                            assert_eq!(
                                (r.sense_key(), r.asc()),
                                (0x0E, (0x1D, 0x00)),
                                "CAW failed: {:02x?}",
                                &r.sense[..]
                            );
                            miscompares.fetch_add(1, Ordering::SeqCst);
                        }
                        st => panic!("CAW status {st:#x}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let good = good.load(Ordering::SeqCst);
    let miscompares = miscompares.load(Ordering::SeqCst);
    eprintln!("{good} GOOD compare-and-writes, {miscompares} miscompares");
    assert!(good > 0);
    assert_eq!(
        good + miscompares,
        2 * u64::from(SESSIONS_PER_NODE) * ROUNDS as u64
    );

    // The array holds the counter (at the mapped LBA), equal to the GOOD CAWs; both
    // nodes read the same.
    let mut a = session(ap, ARRAY, 60).await;
    let r = a.read10(0, (LBA + BSTART) as u32, 1, BS).await;
    assert_eq!(r.status, 0);
    assert_eq!(
        counter_of(&r.data),
        good,
        "the counter lost updates: {} after {good} GOOD compare-and-writes",
        counter_of(&r.data)
    );
    assert_eq!(r.data, counter_block(good));
    for port in [v1, v2] {
        let mut h = session(port, VIRT, 61).await;
        let r = h.read10(0, LBA as u32, 1, BS).await;
        assert_eq!(r.data, counter_block(good));
    }

    // A miscompare through the volume reports the array's offset of the first
    // differing byte (INFORMATION, VALID=1) and writes nothing.
    let mut h = session(v2, VIRT, 62).await;
    let mut expect = counter_block(good);
    expect[200] ^= 0xff;
    let r = h
        .scsi(0, &caw16(LBA, 1), &[expect, counter_block(0)].concat(), 0)
        .await;
    assert_eq!(r.status, 2);
    assert_eq!((r.sense_key(), r.asc()), (0x0E, (0x1D, 0x00)));
    // Fixed format (D_SENSE is off by default): VALID and INFORMATION in bytes 3..7.
    assert_eq!(
        r.sense[0],
        0xF0,
        "fixed format with VALID: {:02x?}",
        &r.sense[..]
    );
    assert_eq!(u32::from_be_bytes(r.sense[3..7].try_into().unwrap()), 200);
    let r = h.read10(0, LBA as u32, 1, BS).await;
    assert_eq!(r.data, counter_block(good));
    drop(nodes);
}
