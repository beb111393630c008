//! Writes the seeds of every target to `corpus/<target>/seed-NNN` (next to this crate's
//! Cargo.toml), the corpus directory `cargo fuzz run <target>` uses by default:
//!
//! ```text
//! cd fuzz && cargo run --no-default-features --example seed_corpus
//! ```

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for target in switchyard_fuzz::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        let seeds = switchyard_fuzz::seeds::for_target(target);
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), seed)?;
        }
        println!("{}: {} seeds in {}", target, seeds.len(), dir.display());
    }
    Ok(())
}
