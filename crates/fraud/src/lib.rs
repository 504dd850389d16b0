//! `paydedup-fraud`: deterministic fraud signals from a payment and its keyed state.
//!
//! - [`config`]: thresholds and weights ([`FraudConfig`]), loadable from TOML.
//! - [`state`]: the keyed state per card and per customer, with its byte encoding.
//! - [`signals`]: [`assess`], a pure function: (event, state, config) → score, reasons,
//!   and the updated state. No I/O, no clock: the same inputs in the same order always
//!   give the same answer, which is what lets a replay after a crash reproduce it.

mod codec;
pub mod config;
pub mod signals;
pub mod state;

pub use config::FraudConfig;
pub use signals::{assess, Assessment, Reason};
pub use state::{CardState, CustomerState};
