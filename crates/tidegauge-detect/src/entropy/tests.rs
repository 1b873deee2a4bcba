//! Unit and property tests of the `relative_entropy` detector.
use super::*;
use proptest::prelude::*;

fn params(window: u32, bins: u32, warmup: u32) -> RelativeEntropyParams {
    RelativeEntropyParams {
        window,
        bins,
        warmup,
        ..RelativeEntropyParams::default()
    }
}

/// A small deterministic generator (xorshift) with Gaussian draws.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

#[test]
fn quantiles_match_tables() {
    assert!((normal_upper_quantile(0.05) - 1.644854).abs() < 1e-5);
    assert!((normal_upper_quantile(0.001) - 3.090232).abs() < 1e-5);
    assert!((normal_upper_quantile(0.5)).abs() < 1e-9);
    assert!((normal_upper_quantile(0.975) + 1.959964).abs() < 1e-5);
    // Chi-square tables: (df, alpha, value).
    for (df, alpha, want) in [
        (7.0, 0.001, 24.322),
        (7.0, 0.05, 14.067),
        (3.0, 0.01, 11.345),
        (15.0, 0.001, 37.697),
        (63.0, 0.001, 103.442),
    ] {
        let got = chi_square_critical(df, alpha);
        assert!((got / want - 1.0).abs() < 0.01, "df {df} α {alpha}: {got}");
    }
}

#[test]
fn warms_up_then_flags_a_shift_and_a_stuck_sensor_not_noise() {
    let mut d = RelativeEntropy::new(RelativeEntropyParams::default());
    let mut rng = Rng(7);
    for i in 0..400 {
        assert_eq!(d.observe(i, 20.0 + rng.normal()), Verdict::WARMING_UP);
    }
    assert_eq!(d.edges().len(), 7);
    // Never below the chi-square critical value; above it by the warm-up's own spread.
    let chi2 = chi_square_critical(7.0, 0.001);
    assert!(
        d.critical() >= chi2 && d.critical() < 4.0 * chi2,
        "{}",
        d.critical()
    );
    let mut flagged = 0;
    for i in 400..4400 {
        flagged += u32::from(d.observe(i, 20.0 + rng.normal()).is_anomaly);
    }
    assert!(flagged < 40, "{flagged} of 4000 normal values flagged");
    // A shift of two standard deviations is flagged within one window.
    let first = (0..50)
        .position(|i| d.observe(4400 + i, 22.0 + rng.normal()).is_anomaly)
        .expect("shift flagged");
    assert!(first < 40, "{first}");
    for i in 0..400 {
        d.observe(4450 + i, 20.0 + rng.normal());
    }
    // Stuck: every value in one bin.
    let v = (0..50)
        .map(|i| d.observe(5000 + i, 20.0))
        .find(|v| v.is_anomaly)
        .expect("stuck flagged");
    assert!(
        d.explain(&v).starts_with("relative entropy G "),
        "{}",
        d.explain(&v)
    );
}

#[test]
fn a_recurring_state_becomes_normal() {
    let mut d = RelativeEntropy::new(params(20, 4, 100));
    let mut rng = Rng(3);
    for i in 0..100 {
        d.observe(i, rng.normal());
    }
    // A new level for many blocks: flagged at first, then known.
    let flags: Vec<bool> = (0..400)
        .map(|i| d.observe(100 + i, 10.0 + rng.normal()).is_anomaly)
        .collect();
    assert!(flags[..40].iter().any(|&f| f));
    assert!(flags[200..].iter().all(|&f| !f), "{:?}", d.supports());
}

#[test]
fn a_constant_warm_up_starts_again() {
    let mut d = RelativeEntropy::new(params(4, 4, 8));
    for i in 0..20 {
        assert_eq!(d.observe(i, 5.0), Verdict::WARMING_UP);
    }
    assert!(d.edges().is_empty());
    for i in 20..28 {
        d.observe(i, (i % 4) as f64);
    }
    assert!(!d.edges().is_empty());
}

#[test]
fn validate_reports_every_field() {
    let errs = RelativeEntropyParams {
        window: 2,
        bins: 1,
        warmup: 1,
        target_alarm_rate: 0.0,
        hypotheses: 0,
        min_support: 0,
    }
    .validate()
    .unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "window",
            "bins",
            "warmup",
            "target_alarm_rate",
            "hypotheses",
            "min_support"
        ]
    );
    assert!(RelativeEntropyParams::default().validate().is_ok());
    assert!(params(50, 8, 49).validate().is_err());
}

/// The detector written the slow, obvious way: every finite value kept, the window's
/// histogram and every logarithm recomputed from scratch at each step.
struct Naive {
    p: RelativeEntropyParams,
    warm: Vec<f64>,
    edges: Vec<f64>,
    critical: f64,
    seen: Vec<usize>,
    /// (shares, support)
    hyps: Vec<(Vec<f64>, u32)>,
}

impl Naive {
    fn counts(&self) -> Vec<u32> {
        let w = self.p.window as usize;
        let mut c = vec![0u32; self.edges.len() + 1];
        for &b in &self.seen[self.seen.len() - w..] {
            c[b] += 1;
        }
        c
    }

    fn g(&self, counts: &[u32], shares: &[f64]) -> f64 {
        let w = f64::from(self.p.window);
        let denom = w + PSEUDO_COUNT * shares.len() as f64;
        let own: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| f64::from(c) * (f64::from(c) / w).ln())
            .sum();
        let cross: f64 = counts
            .iter()
            .zip(shares)
            .filter(|(c, _)| **c > 0)
            .map(|(&c, &s)| f64::from(c) * ((s * w + PSEUDO_COUNT) / denom).ln())
            .sum();
        (2.0 * (own - cross)).max(0.0)
    }

    fn learn(&mut self) {
        let counts = self.counts();
        let w = f64::from(self.p.window);
        let shares: Vec<f64> = counts.iter().map(|&c| f64::from(c) / w).collect();
        let mut best: Option<(usize, f64)> = None;
        for (i, (s, _)) in self.hyps.iter().enumerate() {
            let g = self.g(&counts, s);
            if best.is_none_or(|(_, b)| g < b) {
                best = Some((i, g));
            }
        }
        match best {
            Some((i, g)) if g <= self.critical => {
                let (s, support) = &mut self.hyps[i];
                *support += 1;
                let k = f64::from((*support).min(MAX_AVERAGE));
                for (q, p) in s.iter_mut().zip(&shares) {
                    *q += (p - *q) / k;
                }
            }
            _ => {
                if self.hyps.len() == self.p.hypotheses as usize {
                    let min = self.hyps.iter().map(|h| h.1).min().unwrap();
                    let i = self.hyps.iter().position(|h| h.1 == min).unwrap();
                    self.hyps.remove(i);
                }
                self.hyps.push((shares, 1));
            }
        }
    }

    fn add(&mut self, x: f64) {
        let b = self.edges.iter().filter(|&&e| e <= x).count();
        self.seen.push(b);
        let w = self.p.window as usize;
        if self.seen.len().is_multiple_of(w) {
            self.learn();
        }
    }

    /// Returns the statistic of a judged value.
    fn observe(&mut self, x: f64) -> Option<f64> {
        if self.edges.is_empty() {
            self.warm.push(x);
            if self.warm.len() == self.p.warmup as usize {
                let mut s = self.warm.clone();
                s.sort_by(f64::total_cmp);
                let k = self.p.bins as usize;
                let mut edges: Vec<f64> = Vec::new();
                for j in 1..k {
                    let e = s[j * s.len() / k];
                    if e > s[0] && edges.last() != Some(&e) {
                        edges.push(e);
                    }
                }
                let warm = std::mem::take(&mut self.warm);
                if !edges.is_empty() {
                    let chi2 = chi_square_critical(edges.len() as f64, self.p.target_alarm_rate);
                    self.critical = chi2;
                    self.edges = edges;
                    // Pass 1: G of each full window against every hypothesis so far.
                    let mut gs: Vec<f32> = Vec::new();
                    for &v in &warm {
                        let b = self.edges.iter().filter(|&&e| e <= v).count();
                        self.seen.push(b);
                        if self.seen.len() >= self.p.window as usize && !self.hyps.is_empty() {
                            let counts = self.counts();
                            let g = self
                                .hyps
                                .iter()
                                .map(|h| self.g(&counts, &h.0))
                                .fold(f64::INFINITY, f64::min);
                            gs.push(g as f32);
                        }
                        if self.seen.len().is_multiple_of(self.p.window as usize) {
                            self.learn();
                        }
                    }
                    self.critical = tail_threshold(&mut gs, chi2, self.p.target_alarm_rate);
                    self.seen.clear();
                    self.hyps.clear();
                    for v in warm {
                        self.add(v);
                    }
                }
            }
            return None;
        }
        let b = self.edges.iter().filter(|&&e| e <= x).count();
        self.seen.push(b);
        let counts = self.counts();
        let g = self
            .hyps
            .iter()
            .filter(|h| h.1 >= self.p.min_support)
            .map(|h| self.g(&counts, &h.0))
            .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.min(g))));
        self.seen.pop();
        self.add(x);
        g
    }
}

proptest! {
    #[test]
    fn matches_naive_reference(
        window in 4u32..12,
        bins in 2u32..7,
        extra in 0u32..30,
        hypotheses in 1u32..5,
        min_support in 1u32..4,
        rate in prop_oneof![Just(0.001), Just(0.05), Just(0.3)],
        values in prop::collection::vec(
            prop_oneof![6 => -1e3f64..1e3, 1 => Just(f64::NAN), 3 => (0i32..4).prop_map(f64::from)],
            1..400),
    ) {
        let p = RelativeEntropyParams {
            window,
            bins,
            warmup: window + extra,
            target_alarm_rate: rate,
            hypotheses,
            min_support,
        };
        let mut d = RelativeEntropy::new(p);
        let mut naive = Naive { p, warm: Vec::new(), edges: Vec::new(), critical: 0.0, seen: Vec::new(), hyps: Vec::new() };
        for (i, &v) in values.iter().enumerate() {
            let got = d.observe(i as i64, v);
            prop_assert!((0.0..=1.0).contains(&got.score));
            prop_assert_eq!(got.is_anomaly, got.score > 0.5);
            if !v.is_finite() {
                prop_assert_eq!(got, NO_VERDICT);
                continue;
            }
            let want = naive.observe(v);
            prop_assert_eq!(d.edges(), &naive.edges[..]);
            match (got.statistic, want) {
                (Some(g), Some(w)) => {
                    prop_assert!((g - w).abs() <= 1e-9 * w.max(1.0), "{} vs {}", g, w);
                    if (w - naive.critical).abs() > 1e-9 * naive.critical {
                        prop_assert_eq!(got.is_anomaly, w > naive.critical);
                    }
                }
                (None, None) => prop_assert_eq!(got, Verdict::WARMING_UP),
                (g, w) => prop_assert!(false, "statistic {:?} vs naive {:?} at {}", g, w, i),
            }
            let supports: Vec<u32> = naive.hyps.iter().map(|h| h.1).collect();
            prop_assert_eq!(d.supports(), supports);
        }
    }

    #[test]
    fn never_panics_and_stays_consistent(
        values in prop::collection::vec(any::<f64>(), 0..300),
        ts in prop::collection::vec(any::<i64>(), 300),
    ) {
        let mut d = RelativeEntropy::new(params(4, 4, 8));
        for (v, t) in values.iter().zip(&ts) {
            let got = d.observe(*t, *v);
            prop_assert!((0.0..=1.0).contains(&got.score));
            prop_assert_eq!(got.is_anomaly, got.score > 0.5);
            prop_assert!(got.statistic.is_none_or(|s| !s.is_nan()));
            if got.is_anomaly {
                let _ = d.explain(&got);
            }
        }
    }
}
