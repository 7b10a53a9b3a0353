//! The retry wait the service uses wherever a failure repeats and Strava is
//! not the one asking us to wait: 30 s after the first, four times longer
//! after each further one in a row (30 s, 2 min, 8 min, 32 min, 2 h 8 min,
//! ...), up to a cap chosen by the caller.

/// The wait after the `n`-th failure in a row (the first is 1; 0 counts as
/// 1), at most `cap_secs`.
pub fn fourfold_secs(n: u32, cap_secs: i64) -> i64 {
    let exponent = n.clamp(1, 16) - 1;
    (30 * 4_i64.pow(exponent)).min(cap_secs)
}

#[cfg(test)]
mod tests {
    use super::fourfold_secs;

    #[test]
    fn each_failure_in_a_row_waits_four_times_longer_up_to_the_cap() {
        let waits: Vec<i64> = (0..=6).map(|n| fourfold_secs(n, 21_600)).collect();
        assert_eq!(waits, [30, 30, 120, 480, 1920, 7680, 21_600]);
        assert_eq!(fourfold_secs(u32::MAX, i64::MAX), 30 * 4_i64.pow(15));
    }
}
