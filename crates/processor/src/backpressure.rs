//! Backpressure: the consumer stops reading while the outbox is full.
//!
//! A sink outage stops delivery, not processing — until the outbox holds `bound` rows.
//! Then the consumer pauses, and resumes only once the relay has brought the outbox
//! below *half* the bound. The gap between the two thresholds (hysteresis) keeps the
//! consumer from flapping between paused and reading on every delivered batch.

/// Whether the consumer reads or waits for the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flow {
    #[default]
    Reading,
    Paused,
}

/// The flow after seeing `outbox_depth` rows awaiting delivery: pause at the bound,
/// resume below half of it, otherwise stay as is.
pub fn next_flow(flow: Flow, outbox_depth: u64, bound: u64) -> Flow {
    match flow {
        Flow::Reading if outbox_depth >= bound => Flow::Paused,
        Flow::Paused if outbox_depth < bound / 2 => Flow::Reading,
        unchanged => unchanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: u64 = 100;

    #[test]
    fn pauses_at_the_bound_not_before() {
        assert_eq!(next_flow(Flow::Reading, 99, BOUND), Flow::Reading);
        assert_eq!(next_flow(Flow::Reading, 100, BOUND), Flow::Paused);
        assert_eq!(next_flow(Flow::Reading, 5_000, BOUND), Flow::Paused);
    }

    #[test]
    fn resumes_only_below_half_the_bound() {
        // Still above half: stays paused, so it does not flap.
        assert_eq!(next_flow(Flow::Paused, 99, BOUND), Flow::Paused);
        assert_eq!(next_flow(Flow::Paused, 50, BOUND), Flow::Paused);
        assert_eq!(next_flow(Flow::Paused, 49, BOUND), Flow::Reading);
        assert_eq!(next_flow(Flow::Paused, 0, BOUND), Flow::Reading);
    }

    #[test]
    fn reading_below_the_bound_keeps_reading() {
        for depth in [0, 1, 49, 50, 99] {
            assert_eq!(next_flow(Flow::Reading, depth, BOUND), Flow::Reading);
        }
    }
}
