//! The state volume: a size-limited filesystem (tmpfs) for the processor's state, so
//! the campaign can fill it on demand — a disk-full episode — and give the space back.
//! Mounting needs privileges; without them the volume is a plain directory and
//! disk-full episodes are reported as not available.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub struct StateVolume {
    root: PathBuf,
    mounted: bool,
}

impl StateVolume {
    pub fn new(root: &Path, size_mib: u64) -> anyhow::Result<StateVolume> {
        std::fs::create_dir_all(root)?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(root)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Ok(StateVolume {
            root: root.to_owned(),
            mounted,
        })
    }

    pub fn mounted(&self) -> bool {
        self.mounted
    }

    /// The processor's state directory on the volume.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    fn filler(&self) -> PathBuf {
        self.root.join("filler")
    }

    /// Takes every free byte: writes a filler file until the filesystem says it is full.
    pub fn fill(&self) -> anyhow::Result<()> {
        use std::io::Write;
        if !self.mounted {
            bail!("the state volume is not a mounted filesystem");
        }
        let mut f = std::fs::File::create(self.filler()).context("creating the filler")?;
        let block = vec![0xA5u8; 1 << 20];
        loop {
            match f.write(&block) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => return Ok(()), // ENOSPC
                Err(e) => return Err(e).context("filling the state volume"),
            }
        }
    }

    /// Gives the space back.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for StateVolume {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.root).status();
        }
    }
}
