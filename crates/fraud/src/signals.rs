//! The fraud decision: a pure function of the event, the keyed state and the config.

use paydedup_event::{PaymentEvent, SmolStr};

use crate::state::{
    AmountStats, CardState, CustomerState, MAX_CURRENCIES, MAX_DEVICES, MAX_RECENT,
};
use crate::FraudConfig;

const MINUTE: i64 = 60_000_000;

/// Why a payment scored. The names are stable: they land in `payments.fraud_reasons`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Velocity10m,
    Velocity1h,
    AmountAnomaly,
    GeoMismatch,
    ImpossibleTravel,
    NewDevice,
    HighRiskMcc,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Velocity10m => "velocity_10m",
            Reason::Velocity1h => "velocity_1h",
            Reason::AmountAnomaly => "amount_anomaly",
            Reason::GeoMismatch => "geo_mismatch",
            Reason::ImpossibleTravel => "impossible_travel",
            Reason::NewDevice => "new_device",
            Reason::HighRiskMcc => "high_risk_mcc",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// 0–100.
    pub score: u8,
    pub reasons: Vec<Reason>,
    pub flagged: bool,
    /// Payments on the card in the 10 minutes and the hour up to this one.
    pub card_count_10m: u32,
    pub card_count_1h: u32,
}

/// Scores `event` against the card's and customer's history, then folds the event into
/// that history. Call it once per unique payment, in partition order.
pub fn assess(
    event: &PaymentEvent,
    card: &mut CardState,
    customer: &mut CustomerState,
    cfg: &FraudConfig,
) -> Assessment {
    let t = event.event_time_micros();
    let mut reasons = Vec::new();

    // Velocity: payments within the window ending at this one (by event time, so a
    // replay of old traffic scores as it would have live).
    let in_window =
        |w: i64| card.recent.iter().filter(|&&x| x > t - w && x <= t).count() as u32 + 1;
    let count_10m = in_window(10 * MINUTE);
    let count_1h = in_window(60 * MINUTE);
    if count_10m >= cfg.velocity_10m {
        reasons.push(Reason::Velocity10m);
    } else if count_1h >= cfg.velocity_1h {
        reasons.push(Reason::Velocity1h);
    }

    // Amount far above the card's history in this currency.
    let code = event.currency.code();
    let amount = event.amount_minor as f64;
    if let Some(stats) = card.amounts.iter().find(|s| s.currency == code) {
        if stats.n >= cfg.amount_min_history {
            let var = stats.m2 / (stats.n - 1) as f64;
            let sd = var.sqrt().max(stats.mean.abs() * 0.05).max(1.0);
            if (amount - stats.mean) / sd > cfg.amount_zscore {
                reasons.push(Reason::AmountAnomaly);
            }
        }
    }

    if event.ip_country != event.card_country {
        reasons.push(Reason::GeoMismatch);
    }

    if let Some(prev) = &card.last_ip_country {
        let gap = (t - card.last_ip_country_micros).abs();
        if prev != &event.ip_country && gap < cfg.impossible_travel_secs * 1_000_000 {
            reasons.push(Reason::ImpossibleTravel);
        }
    }

    if !customer.devices.is_empty() && !customer.devices.contains(&event.device_id) {
        reasons.push(Reason::NewDevice);
    }

    if cfg.high_risk_mcc.contains(&event.merchant_category) {
        reasons.push(Reason::HighRiskMcc);
    }

    let w = &cfg.weights;
    let score: u32 = reasons
        .iter()
        .map(|r| {
            u32::from(match r {
                Reason::Velocity10m => w.velocity_10m,
                Reason::Velocity1h => w.velocity_1h,
                Reason::AmountAnomaly => w.amount_anomaly,
                Reason::GeoMismatch => w.geo_mismatch,
                Reason::ImpossibleTravel => w.impossible_travel,
                Reason::NewDevice => w.new_device,
                Reason::HighRiskMcc => w.high_risk_mcc,
            })
        })
        .sum();
    let score = score.min(100) as u8;

    update(event, card, customer);

    Assessment {
        score,
        flagged: score >= cfg.flag_threshold,
        reasons,
        card_count_10m: count_10m,
        card_count_1h: count_1h,
    }
}

fn update(event: &PaymentEvent, card: &mut CardState, customer: &mut CustomerState) {
    let t = event.event_time_micros();
    card.last_seen_micros = card.last_seen_micros.max(t);
    let horizon = card.last_seen_micros - 60 * MINUTE;
    card.recent.retain(|&x| x > horizon);
    card.recent.push(t);
    if card.recent.len() > MAX_RECENT {
        let excess = card.recent.len() - MAX_RECENT;
        card.recent.drain(..excess);
    }

    let code = event.currency.code();
    let amount = event.amount_minor as f64;
    let stats = match card.amounts.iter().position(|s| s.currency == code) {
        Some(i) => &mut card.amounts[i],
        None => {
            if card.amounts.len() >= MAX_CURRENCIES {
                card.amounts.remove(0);
            }
            card.amounts.push(AmountStats {
                currency: SmolStr::new_static(code),
                ..AmountStats::default()
            });
            let last = card.amounts.len() - 1;
            &mut card.amounts[last]
        }
    };
    stats.n += 1;
    let delta = amount - stats.mean;
    stats.mean += delta / stats.n as f64;
    stats.m2 += delta * (amount - stats.mean);

    if t >= card.last_ip_country_micros || card.last_ip_country.is_none() {
        card.last_ip_country = Some(event.ip_country.clone());
        card.last_ip_country_micros = t;
    }

    customer.last_seen_micros = customer.last_seen_micros.max(t);
    if !customer.devices.contains(&event.device_id) {
        if customer.devices.len() >= MAX_DEVICES {
            customer.devices.remove(0);
        }
        customer.devices.push(event.device_id.clone());
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};
    use paydedup_event::{Currency, PaymentMethod, TransactionId};

    use super::*;

    fn event(id: &str, minute: i64) -> PaymentEvent {
        PaymentEvent {
            transaction_id: TransactionId::new_unchecked(id),
            event_time: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
                + Duration::minutes(minute),
            amount_minor: 2_000,
            currency: Currency::from_code("USD").unwrap(),
            merchant_id: "m-1".into(),
            merchant_category: 5411,
            card_fingerprint: "ab".repeat(16).into(),
            card_country: "US".into(),
            customer_id: "c-1".into(),
            ip_address: "20.0.0.1".parse().unwrap(),
            ip_country: "US".into(),
            device_id: "d-1".into(),
            region: "us-east".into(),
            payment_method: PaymentMethod::Card,
            schema_version: 1,
        }
    }

    struct Case {
        name: &'static str,
        history: Vec<PaymentEvent>,
        event: PaymentEvent,
        expect: Vec<Reason>,
    }

    #[test]
    fn table_of_signals() {
        let cfg = FraudConfig::default();
        let mut abroad = event("x", 30);
        abroad.ip_country = "DE".into();
        let mut big = event("big", 60);
        big.amount_minor = 500_000;
        let mut new_device = event("nd", 10);
        new_device.device_id = "d-9".into();
        let mut gambling = event("g", 10);
        gambling.merchant_category = 7995;
        let mut travel_later = event("t2", 200);
        travel_later.ip_country = "DE".into();
        travel_later.card_country = "DE".into();
        let cases = vec![
            Case {
                name: "first payment is clean",
                history: vec![],
                event: event("a", 0),
                expect: vec![],
            },
            Case {
                name: "five in ten minutes is velocity",
                history: (0..4).map(|i| event(&format!("v{i}"), i)).collect(),
                event: event("v4", 5),
                expect: vec![Reason::Velocity10m],
            },
            Case {
                name: "four in ten minutes is not",
                history: (0..3).map(|i| event(&format!("v{i}"), i)).collect(),
                event: event("v3", 5),
                expect: vec![],
            },
            Case {
                name: "twelve in an hour is hourly velocity",
                history: (0..11).map(|i| event(&format!("h{i}"), i * 5)).collect(),
                event: event("h11", 58),
                expect: vec![Reason::Velocity1h],
            },
            Case {
                name: "IP abroad right after a home payment is geo mismatch and impossible travel",
                history: vec![event("home", 0)],
                event: abroad,
                expect: vec![Reason::GeoMismatch, Reason::ImpossibleTravel],
            },
            Case {
                name: "a country change hours later is not impossible travel",
                history: vec![event("home", 0)],
                event: travel_later,
                expect: vec![],
            },
            Case {
                name: "an amount far above history is an anomaly",
                history: (0..6).map(|i| event(&format!("s{i}"), i * 11)).collect(),
                event: big,
                expect: vec![Reason::AmountAnomaly],
            },
            Case {
                name: "a new device for a known customer",
                history: vec![event("known", 0)],
                event: new_device,
                expect: vec![Reason::NewDevice],
            },
            Case {
                name: "high-risk MCC",
                history: vec![],
                event: gambling,
                expect: vec![Reason::HighRiskMcc],
            },
        ];
        for case in cases {
            let (mut card, mut cust) = (CardState::default(), CustomerState::default());
            for h in &case.history {
                assess(h, &mut card, &mut cust, &cfg);
            }
            let a = assess(&case.event, &mut card, &mut cust, &cfg);
            assert_eq!(a.reasons, case.expect, "{}", case.name);
            assert!(a.score <= 100);
            assert_eq!(a.flagged, a.score >= cfg.flag_threshold, "{}", case.name);
        }
    }

    #[test]
    fn same_inputs_same_answer() {
        let cfg = FraudConfig::default();
        let run = || {
            let (mut card, mut cust) = (CardState::default(), CustomerState::default());
            (0..20)
                .map(|i| assess(&event(&format!("e{i}"), i), &mut card, &mut cust, &cfg).score)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn state_stays_bounded() {
        let cfg = FraudConfig::default();
        let (mut card, mut cust) = (CardState::default(), CustomerState::default());
        for i in 0..500 {
            let mut e = event(&format!("e{i}"), 0);
            e.device_id = format!("d-{i}").into();
            assess(&e, &mut card, &mut cust, &cfg);
        }
        assert!(card.recent.len() <= MAX_RECENT);
        assert!(cust.devices.len() <= MAX_DEVICES);
    }
}
