//! The virtual volumes this node serves, shared by everything that acts on them: the
//! management API, the remap participant, the migration driver and the catalog (which
//! adds and removes volumes as the cluster creates and deletes them).

use std::collections::BTreeMap;
use std::sync::Arc;

use blockdev::BlockStore;
use parking_lot::{Mutex, RwLock};
use scsi::LogicalUnit;
use volume::LiveVolume;

use crate::api::IoStats;

/// One served volume.
pub struct ServedVolume {
    pub live: Arc<LiveVolume>,
    /// Host I/O through `store` is counted here.
    pub stats: Arc<IoStats>,
    /// What logical units serve: `live`, counted.
    pub store: Arc<dyn BlockStore>,
    /// The logical units that show the volume (told when its capacity changes).
    pub lus: Mutex<Vec<Arc<LogicalUnit>>>,
}

impl ServedVolume {
    pub fn new(live: Arc<LiveVolume>) -> Arc<ServedVolume> {
        let (store, stats) = crate::api::counted(live.clone());
        Arc::new(ServedVolume {
            live,
            stats,
            store,
            lus: Mutex::new(Vec::new()),
        })
    }

    /// Tell every logical unit showing the volume that its capacity changed.
    pub fn capacity_changed(&self) {
        for lu in self.lus.lock().iter() {
            lu.capacity_changed();
        }
    }
}

/// The served volumes by name. Cheap to share (`Arc`).
#[derive(Default)]
pub struct Served {
    map: RwLock<BTreeMap<String, Arc<ServedVolume>>>,
}

impl Served {
    pub fn get(&self, name: &str) -> Option<Arc<ServedVolume>> {
        self.map.read().get(name).cloned()
    }

    /// Every served volume, by name.
    pub fn all(&self) -> Vec<(String, Arc<ServedVolume>)> {
        self.map
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.read().contains_key(name)
    }

    pub fn insert(&self, sv: Arc<ServedVolume>) {
        self.map.write().insert(sv.live.name().to_string(), sv);
    }

    pub fn remove(&self, name: &str) -> Option<Arc<ServedVolume>> {
        self.map.write().remove(name)
    }
}
