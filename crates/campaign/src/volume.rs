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

    /// Takes every free byte but a few.
    pub fn fill(&self) -> anyhow::Result<()> {
        if !self.mounted {
            bail!("the state volume is not a mounted filesystem");
        }
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.root)
            .output()
            .context("running df")?;
        let avail: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .context("reading df's answer")?;
        let size = avail.saturating_sub(4096).max(1);
        let status = Command::new("fallocate")
            .args(["-l", &size.to_string()])
            .arg(self.filler())
            .status()
            .context("running fallocate")?;
        if !status.success() {
            bail!("fallocate of {size} bytes failed: {status}");
        }
        Ok(())
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
