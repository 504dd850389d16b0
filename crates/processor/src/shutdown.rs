//! SIGTERM/SIGINT → a flag the Kafka loop checks between batches. The batch in hand is
//! finished and committed, the relay is flushed, and the process exits 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

#[derive(Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Installs the signal handlers.
    pub fn install() -> anyhow::Result<Shutdown> {
        let s = Shutdown::default();
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, s.0.clone()).context("installing signal handlers")?;
        }
        Ok(s)
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }
}
