//! The numbers a step reports, computed without touching the module: a latency histogram with
//! bounded memory, Jain's fairness index, and what `/proc/self` says about CPU time and memory.
//!
//! Every call's latency is recorded, so the histogram must not grow with the call count: a
//! C_GetSessionInfo step makes tens of millions of calls a second, and keeping each latency would
//! cost more memory than the module under test (which would spoil the RSS figure).

use std::time::Duration;

/// Sub-buckets per power of two: a recorded value is off by less than 1/64 (1.6%) of itself.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values up to 2^63 ns; far more than any step lasts.
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

/// A log-linear latency histogram in nanoseconds: values below 64 are exact, larger values keep
/// their top seven significant bits (relative error under 1.6%). Fixed size (about 30 KiB).
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Histogram {{ total: {}, max: {} }}",
            self.total, self.max
        )
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// The bucket of `v`.
    fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        // `v` has `bits` significant bits; keep the top SUB_BITS + 1 of them (the leading one is
        // implied by the power-of-two group).
        let bits = 64 - v.leading_zeros();
        let shift = bits - SUB_BITS - 1;
        let group = (shift + 1) as usize;
        let sub = ((v >> shift) as usize) & (SUB - 1);
        group * SUB + sub
    }

    /// The largest value that lands in bucket `i` (so a percentile never understates).
    fn upper(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let group = i / SUB;
        let sub = (i % SUB) as u64;
        let shift = (group - 1) as u32;
        let low = ((SUB as u64) | sub) << shift;
        low + ((1u64 << shift) - 1)
    }

    /// Count one value.
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Add every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `p`-th percentile (0 < p <= 100), nearest-rank: the smallest recorded value (to the
    /// histogram's resolution, rounded up, never above the largest value seen) such that at least
    /// `p`% of the values are at or below it. `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// Jain's fairness index of the per-thread operation counts: (Σx)² / (n·Σx²). 1 when every
/// thread did the same amount of work, 1/n when one thread did all of it. `None` for no threads
/// or no work.
pub fn jain_index(per_thread: &[u64]) -> Option<f64> {
    let n = per_thread.len() as f64;
    let sum: f64 = per_thread.iter().map(|&x| x as f64).sum();
    let sum_sq: f64 = per_thread.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if per_thread.is_empty() || sum_sq == 0.0 {
        return None;
    }
    Some(sum * sum / (n * sum_sq))
}

/// Linux reports `/proc/<pid>/stat` times in USER_HZ ticks, which is 100 on every architecture
/// the kernel supports today (it is fixed for the user ABI, unlike the kernel's HZ).
const USER_HZ: u64 = 100;

/// User plus system CPU time from the text of `/proc/self/stat` (fields 14 and 15, counted
/// after the command name, which may itself contain spaces and parentheses).
pub fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    let after = &stat[stat.rfind(')')? + 1..];
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// A `kB` field (e.g. `VmHWM`, `VmRSS`) of `/proc/self/status`, in KiB.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let v = rest.trim().strip_suffix("kB")?.trim();
        v.parse().ok()
    })
}

/// CPU time this process has used so far (every thread, live or exited), or `None` off Linux.
pub fn process_cpu() -> Option<Duration> {
    parse_stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Resident set size now, KiB.
pub fn rss_kib() -> Option<u64> {
    parse_status_kib(&std::fs::read_to_string("/proc/self/status").ok()?, "VmRSS")
}

/// Peak resident set size (`VmHWM`), KiB: since the last [`reset_peak_rss`] that worked, else
/// since the process started.
pub fn peak_rss_kib() -> Option<u64> {
    parse_status_kib(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM")
}

/// Reset `VmHWM` to the current RSS (writing `5` to `/proc/self/clear_refs`, Linux 4.0+), so the
/// next [`peak_rss_kib`] is the peak of what happens in between. Returns whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact_and_percentiles_use_nearest_rank() {
        let mut h = Histogram::default();
        for v in 1..=50 {
            h.record(v);
        }
        assert_eq!(h.count(), 50);
        assert_eq!(h.percentile(50.0), Some(25));
        assert_eq!(h.percentile(100.0), Some(50));
        assert_eq!(h.percentile(0.1), Some(1));
        assert_eq!(Histogram::default().percentile(50.0), None);
    }

    #[test]
    fn large_values_are_within_the_stated_resolution_and_never_understated() {
        for v in [
            64u64,
            65,
            127,
            128,
            1000,
            12_345,
            999_999,
            123_456_789,
            u64::MAX / 3,
        ] {
            let i = Histogram::index(v);
            let up = Histogram::upper(i);
            assert!(up >= v, "{v}: bucket top {up} is below the value");
            assert!(
                (up - v) as f64 <= v as f64 / 64.0,
                "{v}: bucket top {up} is more than 1/64 above"
            );
            assert!(
                Histogram::index(up) == i,
                "{v}: the bucket top is in the bucket"
            );
        }
        // Buckets are ordered: a larger value never lands in an earlier bucket.
        let mut last = 0;
        for v in (0..200_000u64).step_by(7) {
            let i = Histogram::index(v);
            assert!(i >= last, "{v}");
            last = i;
        }
    }

    #[test]
    fn percentiles_of_a_spread_match_the_sorted_list() {
        let mut h = Histogram::default();
        let values: Vec<u64> = (1..=10_000u64).map(|i| i * 1_000).collect();
        for &v in values.iter().rev() {
            h.record(v);
        }
        for p in [50.0, 99.0, 99.9] {
            let exact = values[((p / 100.0) * values.len() as f64).ceil() as usize - 1] as f64;
            let got = h.percentile(p).unwrap() as f64;
            assert!(
                got >= exact && got <= exact * (1.0 + 1.0 / 64.0),
                "p{p}: {got} vs {exact}"
            );
        }
        // The top is clamped to the largest value seen, not the bucket's top.
        assert_eq!(h.percentile(100.0), Some(10_000_000));
    }

    #[test]
    fn merging_adds_counts() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.record(10);
        b.record(1_000_000);
        b.record(20);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.percentile(100.0), Some(1_000_000));
        assert_eq!(a.percentile(34.0), Some(20));
    }

    #[test]
    fn jain_is_one_when_fair_and_one_over_n_when_one_thread_works() {
        assert_eq!(jain_index(&[5, 5, 5, 5]), Some(1.0));
        assert_eq!(jain_index(&[8, 0, 0, 0]), Some(0.25));
        let j = jain_index(&[10, 20]).unwrap();
        assert!((j - 0.9).abs() < 1e-9, "{j}");
        assert_eq!(jain_index(&[]), None);
        assert_eq!(jain_index(&[0, 0]), None);
    }

    #[test]
    fn proc_stat_cpu_is_read_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194304 102 0 0 0 250 75 0 0 20 0 9 0 1227409";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_millis(3250)));
        assert_eq!(parse_stat_cpu("garbage"), None);
        assert_eq!(parse_stat_cpu("1 (x) S 1 2"), None);
    }

    #[test]
    fn proc_status_fields_are_read_in_kib() {
        let status = "Name:\tx\nVmPeak:\t    3060 kB\nVmHWM:\t    1708 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(1708));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(1024));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert_eq!(parse_status_kib("VmRSSX:\t1 kB\n", "VmRSS"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        // Linux only (the harness's platform): the readers work on the real files.
        let cpu0 = process_cpu().expect("/proc/self/stat is readable");
        let mut x = 0u64;
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(process_cpu().unwrap() >= cpu0);
        let rss = rss_kib().expect("VmRSS");
        assert!(rss > 0);
        assert!(peak_rss_kib().expect("VmHWM") >= rss / 2);
    }
}
