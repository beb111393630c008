//! Virtual volumes: a virtualizing node maps one volume onto LUs of an array node (a
//! second switchyard process) and a local file. Data written through the volume lands at
//! the mapped back-end offsets, across extent boundaries, at queue depth 16.

use integration_tests::*;

const BS: usize = 512;
const ARRAY: &str = "iqn.2026-11.org.switchyard:array";
const VIRT: &str = "iqn.2026-11.org.switchyard:virtual";

async fn session(port: u16, target: &str, isid: u8) -> Initiator {
    let mut i = Initiator::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    i.login(&LoginOpts {
        target: Some(target.into()),
        isid: Some([0x80, 0, 0, 0, 2, isid]),
        ..Default::default()
    })
    .await
    .expect("login");
    i.clear_ua(0).await;
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_over_array_luns_and_a_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ap, vp) = (free_port(), free_port());
    let array_cfg = dir.path().join("array.toml");
    std::fs::write(
        &array_cfg,
        format!(
            "[node]\nname = \"array\"\ndata_dir = \"{d}\"\n[[portal]]\nlisten = \"127.0.0.1:{ap}\"\n\
             [[target]]\nname = \"{ARRAY}\"\n\
             [[target.lun]]\nlun = 0\npath = \"a0.img\"\nsize = \"8MiB\"\n\
             [[target.lun]]\nlun = 1\npath = \"a1.img\"\nsize = \"8MiB\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let _array = NodeProcess::spawn(&array_cfg, None);
    wait_port(ap).await;
    // vol1: [0,4096) -> array/lun0 [0,4096); [4096,6144) -> array/lun1 [1000,3048);
    // [6144,8192) -> local [0,2048); [8192,9216) hole.
    let virt_cfg = dir.path().join("virt.toml");
    std::fs::write(
        &virt_cfg,
        format!(
            "[node]\nname = \"virt\"\ndata_dir = \"{d}\"\n[[portal]]\nlisten = \"127.0.0.1:{vp}\"\n\
             [[backend]]\nid = \"array\"\nportal = \"127.0.0.1:{ap}\"\ntarget = \"{ARRAY}\"\nsessions = 2\n\
             [[store]]\nid = \"local\"\npath = \"local.img\"\nsize = \"1MiB\"\n\
             [mapping]\nepoch = 1\n[[mapping.volumes]]\nname = \"vol1\"\n\
             wwn = \"naa.6005359000000000000000000000b001\"\nblock_size = 512\nblocks = 9216\n\
             [[mapping.volumes.extents]]\nvstart = 0\nblocks = 4096\nbackend = \"array/lun0\"\nbstart = 0\n\
             [[mapping.volumes.extents]]\nvstart = 4096\nblocks = 2048\nbackend = \"array/lun1\"\nbstart = 1000\n\
             [[mapping.volumes.extents]]\nvstart = 6144\nblocks = 2048\nbackend = \"local\"\nbstart = 0\n\
             [[target]]\nname = \"{VIRT}\"\n[[target.lun]]\nlun = 0\nvolume = \"vol1\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let _virt = NodeProcess::spawn(&virt_cfg, None);
    wait_port(vp).await;

    let mut h = session(vp, VIRT, 1).await;
    // The LU reports the volume's identity and size.
    let r = h.scsi(0, &[0x12, 1, 0x83, 0, 255, 0], &[], 255).await;
    assert_eq!(r.status, 0);
    let naa = [
        0x60, 0x05, 0x35, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb0, 0x01,
    ];
    assert!(
        r.data.windows(16).any(|w| w == naa),
        "VPD 0x83 carries the volume's NAA"
    );
    let mut rc = [0u8; 16];
    rc[0] = 0x9e;
    rc[1] = 0x10;
    rc[13] = 32;
    let r = h.scsi(0, &rc, &[], 32).await;
    assert_eq!(&r.data[0..8], &9215u64.to_be_bytes());

    // Writes of 64 blocks every 50 blocks from 0 to 8150: many straddle extent edges.
    let starts: Vec<u64> = (0..8150).step_by(50).collect();
    let cmds: Vec<_> = starts
        .iter()
        .map(|&lba| {
            let mut data = Vec::new();
            for b in 0..64 {
                data.extend(pattern(7, lba + b, BS));
            }
            (0u16, cdb10(0x2a, lba as u32, 64).to_vec(), data, 0u32)
        })
        .collect();
    // Every write puts pattern(7, lba) in block lba, so overlapping writes agree and
    // the expected content of a block does not depend on their order.
    let res = h.scsi_many(cmds, 16).await;
    assert!(
        res.iter().all(|r| r.status == 0),
        "write through the volume failed"
    );
    let expect = |b: u64| -> Vec<u8> {
        if starts.iter().any(|&s| s <= b && b < s + 64) {
            pattern(7, b, BS)
        } else {
            vec![0u8; BS]
        }
    };
    // Read everything back through the volume (including the hole, which reads zero).
    for chunk in (0..9216u64).step_by(1024) {
        let r = h.read10(0, chunk as u32, 1024, BS).await;
        assert_eq!(r.status, 0);
        for b in 0..1024u64 {
            let lba = chunk + b;
            let got = &r.data[b as usize * BS..(b as usize + 1) * BS];
            assert!(got == expect(lba).as_slice(), "volume block {lba} differs");
        }
    }
    // The data is where the table says: check the array LUs directly.
    let mut a = session(ap, ARRAY, 2).await;
    a.clear_ua(1).await;
    let r = a.read10(0, 4000, 96, BS).await; // lun0 [4000,4096) = volume [4000,4096)
    for b in 0..96u64 {
        assert!(r.data[b as usize * BS..(b as usize + 1) * BS] == expect(4000 + b)[..]);
    }
    let r = a.read10(1, 1000, 64, BS).await; // lun1 [1000,1064) = volume [4096,4160)
    for b in 0..64u64 {
        assert!(r.data[b as usize * BS..(b as usize + 1) * BS] == expect(4096 + b)[..]);
    }
    // A write into the hole fails cleanly (no data to put it), and the session lives.
    let r = h.write10(0, 8200, &pattern(7, 8200, BS), BS).await;
    assert_eq!(r.status, 2, "write into a hole fails");
    assert_eq!(h.read10(0, 0, 1, BS).await.status, 0);
    // The local extent is in local.img at offset 0.
    let local = std::fs::read(dir.path().join("local.img")).unwrap();
    assert!(local[..BS] == expect(6144)[..]);
}
