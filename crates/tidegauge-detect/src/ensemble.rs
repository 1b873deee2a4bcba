//! Combining several detectors' verdicts on the same observation into one.
//!
//! Members without an opinion — any verdict with no statistic: warming up, undefined
//! statistic, non-finite input — are ignored. When no member has an opinion, the result is
//! [`Verdict::WARMING_UP`]. A member *votes* when its score is above 0.5 (the same as
//! `is_anomaly` for verdicts from this crate); NaN scores count as 0.
//!
//! - [`Combine::Max`]: the most alarmed member decides: its score and statistic.
//! - [`Combine::Mean`]: the mean score of the members with an opinion; anomaly when the
//!   mean is above 0.5. Statistic: that mean.
//! - [`Combine::Vote`]: anomaly when at least `min_votes` members vote. Score: the
//!   `min_votes`-th highest member score (0 with fewer opinions) — above 0.5 exactly when
//!   the vote passes, and it grows with the conviction of the deciding member. Statistic:
//!   the number of votes.
//!
//! Cost: O(m) over `m` members (expected, for `Vote`); no allocation up to 16 members.

use crate::judge;
use crate::{ParamError, Verdict};

/// How member verdicts combine. See the [module documentation](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case", deny_unknown_fields)
)]
pub enum Combine {
    /// The highest member score wins. The default.
    #[default]
    Max,
    /// The mean member score decides.
    Mean,
    /// At least `min_votes` members must call the observation anomalous.
    Vote {
        /// Votes needed for an anomaly. At least 1.
        min_votes: u32,
    },
}

fn opinion_score(v: &Verdict) -> Option<f64> {
    v.statistic
        .map(|_| if v.score.is_nan() { 0.0 } else { v.score })
}

impl Combine {
    /// Checks the parameters; returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<ParamError>> {
        match self {
            Combine::Vote { min_votes: 0 } => Err(vec![ParamError::new(
                "min_votes",
                "must be at least 1, got 0",
            )]),
            _ => Ok(()),
        }
    }

    /// The combined verdict of `members` (in any order; members without an opinion are
    /// ignored).
    pub fn combine(&self, members: &[Verdict]) -> Verdict {
        let scores = members.iter().filter_map(opinion_score);
        match *self {
            Combine::Max => {
                let best = members
                    .iter()
                    .filter_map(|v| opinion_score(v).map(|s| (s, v)))
                    .fold(None, |acc: Option<(f64, &Verdict)>, (s, v)| match acc {
                        Some((bs, _)) if bs >= s => acc,
                        _ => Some((s, v)),
                    });
                match best {
                    Some((s, v)) => judge::consistent(v.statistic, s, s > 0.5),
                    None => Verdict::WARMING_UP,
                }
            }
            Combine::Mean => {
                let (n, sum) = scores.fold((0u32, 0.0), |(n, sum), s| (n + 1, sum + s));
                if n == 0 {
                    return Verdict::WARMING_UP;
                }
                let mean = sum / f64::from(n);
                judge::consistent(Some(mean), mean, mean > 0.5)
            }
            Combine::Vote { min_votes } => {
                // Scores on the stack for the usual handful of members.
                let mut stack = [0.0f64; 16];
                let mut heap = Vec::new();
                let s: &mut [f64] = if members.len() <= stack.len() {
                    let mut n = 0;
                    for x in scores {
                        stack[n] = x;
                        n += 1;
                    }
                    &mut stack[..n]
                } else {
                    heap.extend(scores);
                    &mut heap
                };
                if s.is_empty() {
                    return Verdict::WARMING_UP;
                }
                let votes = s.iter().filter(|&&x| x > 0.5).count();
                let k = (min_votes.max(1) - 1) as usize;
                let score = if k < s.len() {
                    *s.select_nth_unstable_by(k, |a, b| b.total_cmp(a)).1
                } else {
                    0.0
                };
                let passed = votes >= min_votes.max(1) as usize;
                judge::consistent(Some(votes as f64), score, passed)
            }
        }
    }

    /// Short reason for a combined anomaly, e.g. "2 of 3 detectors agree (2 needed)".
    pub fn explain(&self, members: &[Verdict], combined: &Verdict) -> String {
        let judged = members.iter().filter(|v| v.statistic.is_some()).count();
        let votes = members
            .iter()
            .filter_map(opinion_score)
            .filter(|&s| s > 0.5)
            .count();
        match self {
            Combine::Max => format!(
                "highest score {:.3} of {judged} detectors ({votes} anomalous)",
                combined.score
            ),
            Combine::Mean => format!(
                "mean score {:.3} > 0.5 over {judged} detectors",
                combined.score
            ),
            Combine::Vote { min_votes } => {
                format!("{votes} of {judged} detectors agree ({min_votes} needed)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::NO_VERDICT;
    use proptest::prelude::*;

    fn v(score: f64) -> Verdict {
        judge::consistent(Some(score * 10.0), score, score > 0.5)
    }

    #[test]
    fn all_warming_up_is_warming_up() {
        for c in [Combine::Max, Combine::Mean, Combine::Vote { min_votes: 1 }] {
            assert_eq!(c.combine(&[]), Verdict::WARMING_UP);
            assert_eq!(
                c.combine(&[Verdict::WARMING_UP, NO_VERDICT]),
                Verdict::WARMING_UP
            );
        }
    }

    #[test]
    fn warming_up_members_are_ignored() {
        let members = [Verdict::WARMING_UP, v(0.8)];
        assert_eq!(Combine::Mean.combine(&members).score, 0.8);
        assert!(Combine::Vote { min_votes: 1 }.combine(&members).is_anomaly);
        assert!(!Combine::Vote { min_votes: 2 }.combine(&members).is_anomaly);
    }

    #[test]
    fn each_rule() {
        let m = [v(0.2), v(0.9), v(0.6)];
        let max = Combine::Max.combine(&m);
        assert_eq!(
            (max.score, max.statistic, max.is_anomaly),
            (0.9, Some(9.0), true)
        );
        let mean = Combine::Mean.combine(&m);
        assert!((mean.score - 1.7 / 3.0).abs() < 1e-12 && mean.is_anomaly);
        let vote = Combine::Vote { min_votes: 2 }.combine(&m);
        assert_eq!(
            (vote.score, vote.statistic, vote.is_anomaly),
            (0.6, Some(2.0), true)
        );
        let c = Combine::Vote { min_votes: 3 };
        let vote = c.combine(&m);
        assert_eq!((vote.score, vote.is_anomaly), (0.2, false));
        assert_eq!(c.explain(&m, &vote), "2 of 3 detectors agree (3 needed)");
        assert!(Combine::Vote { min_votes: 0 }.validate().is_err());
    }

    #[test]
    fn many_members_vote() {
        let mut m: Vec<Verdict> = (0..20).map(|i| v(f64::from(i) / 20.0)).collect();
        m.push(Verdict::WARMING_UP);
        // Scores 0.55..0.95 vote: 9 of them.
        let c = Combine::Vote { min_votes: 9 };
        let got = c.combine(&m);
        assert_eq!(
            (got.statistic, got.score, got.is_anomaly),
            (Some(9.0), 0.55, true)
        );
        let got = Combine::Vote { min_votes: 10 }.combine(&m);
        assert_eq!((got.score, got.is_anomaly), (0.5, false));
    }

    proptest! {
        #[test]
        fn matches_naive_rules(
            members in prop::collection::vec(prop_oneof![
                3 => (0.0f64..=1.0).prop_map(v),
                1 => Just(Verdict::WARMING_UP),
                1 => Just(v(0.5)),
            ], 0..8),
            min_votes in 1u32..5,
        ) {
            let judged: Vec<f64> = members.iter().filter(|m| m.statistic.is_some()).map(|m| m.score).collect();
            for c in [Combine::Max, Combine::Mean, Combine::Vote { min_votes }] {
                let got = c.combine(&members);
                crate::judge::check_consistent(&got)?;
                if judged.is_empty() {
                    prop_assert_eq!(got, Verdict::WARMING_UP);
                    continue;
                }
                let want_anomaly = match c {
                    Combine::Max => judged.iter().any(|&s| s > 0.5),
                    Combine::Mean => judged.iter().sum::<f64>() / judged.len() as f64 > 0.5,
                    Combine::Vote { min_votes } => judged.iter().filter(|&&s| s > 0.5).count() >= min_votes as usize,
                };
                prop_assert_eq!(got.is_anomaly, want_anomaly, "{:?}", c);
            }
        }
    }
}
