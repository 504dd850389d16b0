//! Damaging a stopped processor's state files, as a bad disk or a careless copy would.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::plan::StateFile;

fn files(state: &Path, kind: StateFile) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(state) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = dir
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match kind {
                StateFile::Sst | StateFile::TruncatedSst => name.ends_with(".sst"),
                StateFile::Manifest => name.starts_with("MANIFEST-"),
                StateFile::Wal => name.ends_with(".log") && !name.starts_with("LOG"),
            }
        })
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .collect();
    out.sort();
    out
}

/// Damages one file of the wanted kind (or of the next kind that has a file): flips
/// 8 bytes, or cuts a table file in half. Returns what was done, `None` when the state
/// has no file to damage.
pub fn corrupt(state: &Path, wanted: StateFile, seed: u64) -> anyhow::Result<Option<String>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let order = [
        wanted,
        StateFile::Sst,
        StateFile::Wal,
        StateFile::Manifest,
        StateFile::TruncatedSst,
    ];
    for kind in order {
        let candidates = files(state, kind);
        if candidates.is_empty() {
            continue;
        }
        let file = &candidates[rng.gen_range(0..candidates.len())];
        let mut bytes = std::fs::read(file)?;
        let what = if kind == StateFile::TruncatedSst {
            bytes.truncate(bytes.len() / 2);
            format!("cut {} to {} bytes", file.display(), bytes.len())
        } else {
            for _ in 0..8 {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] ^= 1 << rng.gen_range(0..8);
            }
            format!("flipped 8 bits in {} ({kind:?})", file.display())
        };
        std::fs::write(file, &bytes)?;
        return Ok(Some(what));
    }
    Ok(None)
}

/// Copies a directory tree (a stopped processor's state: a consistent backup).
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_bits_in_the_wanted_kind_and_falls_back_to_another() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("000010.log"), vec![0u8; 64]).unwrap();
        std::fs::write(dir.path().join("LOG"), b"text").unwrap();
        let what = corrupt(dir.path(), StateFile::Sst, 1).unwrap().unwrap();
        assert!(what.contains("000010.log"), "{what}");
        let after = std::fs::read(dir.path().join("000010.log")).unwrap();
        assert!(after.iter().any(|b| *b != 0));
        assert_eq!(std::fs::read(dir.path().join("LOG")).unwrap(), b"text");
    }

    #[test]
    fn nothing_to_damage_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(corrupt(dir.path(), StateFile::Wal, 1).unwrap().is_none());
    }
}
