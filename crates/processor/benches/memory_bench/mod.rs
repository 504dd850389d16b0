//! What the in-memory table benches (`resident_values`, `dedup_index`) share: their
//! command line and their random numbers.

/// `--bench` (measuring, else a quick check under `cargo test`) and the number of
/// keys: when measuring, the first numeric argument or `measuring_keys`; when
/// checking, `checking_keys` (the test command passes its own arguments, such as
/// `--test-threads 2`, whose number is no key count).
pub fn args(measuring_keys: u64, checking_keys: u64) -> (bool, u64) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let keys = if measuring {
        args.iter()
            .find_map(|a| a.parse().ok())
            .unwrap_or(measuring_keys)
    } else {
        checking_keys
    };
    (measuring, keys)
}

/// A tiny deterministic generator (xorshift), the same sequence every run.
pub fn xorshift() -> impl FnMut() -> u64 {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}
