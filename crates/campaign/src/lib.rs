//! `paydedup-campaign`: the seeded fault campaign.
//!
//! The real simulator produces to a real tansu broker, the real processor delivers to
//! the real BigQuery emulator, and faults are injected on a schedule drawn from a seed
//! ([`plan`]): processor SIGKILLs at random moments and at named fail points (before,
//! inside and after the state commit; between a sink acknowledgement and the outbox
//! delete), SIGTERM, broker kill -9 and SIGSTOP, emulator outages, a full state
//! volume, damaged state files. At the end an independent verifier ([`verify`]) reads
//! the tables with its own SQL and checks them against the simulator's manifests, and
//! the final state's dedup index is compared with a replay of the whole topic.
//!
//! The same [`run`] serves the short fixed-seed campaign in the test suite and the
//! long one (`paydedup-campaign --seed N --events 10000000 --long`). A failing seed
//! replays the same plan; the run's folder (logs, manifests) is kept when it fails.
//!
//! - [`plan`]: the faults, a pure function of the seed;
//! - [`producer`]: the simulator in chunks, paused around broker faults;
//! - [`supervisor`]: the processor's runs;
//! - [`volume`]: a size-limited state volume for disk-full episodes;
//! - [`corrupt`]: damaging state files, backups;
//! - [`warehouse`], [`verify`]: the independent verifier;
//! - [`model`]: the dedup index the state must end with, from a replay of the topic;
//! - [`rescale`]: the instance count changed under load (1 → 2 → 4 → 3 → 1), with
//!   SIGKILLs during the hand-offs.

pub mod corrupt;
pub mod model;
pub mod plan;
pub mod producer;
pub mod rescale;
pub mod supervisor;
pub mod verify;
pub mod volume;
pub mod warehouse;

mod runner;

pub use runner::{run, CampaignConfig, Report};
