//! The offsets a partition-aligned `kafka` source has applied per partition, and the guard
//! that admits a delivered message only when it is the next one for the partition's
//! state (whatever order or gaps the client delivers).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a changelog-backed member has read of each partition, and the guards that keep
/// the rows applied to a partition's state contiguous: the state of offset N must see
/// exactly the messages N, N+1, ... in order, whatever the client delivers.
#[derive(Default)]
pub(super) struct Reads {
    /// Per partition, the next offset to apply (after the last message decoded, or the
    /// offset the restored state stands at).
    pub(super) next: BTreeMap<i32, i64>,
    /// Per partition, the jump past unread messages being read again: (next, offset
    /// jumped to, when first seen, times read again since).
    gaps: BTreeMap<i32, (i64, i64, Instant, u32)>,
    /// How long the same jump must last before it is taken as a real gap.
    gap_wait: Duration,
    /// Messages the client delivered again, below what was already read.
    pub(super) redelivered: u64,
}

/// What to do with a delivered message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Apply it.
    Take,
    /// Already applied (or below the restored state): skip it.
    Skip,
    /// Messages before it were not delivered: read again from this offset.
    Seek(i64),
}

/// How far before the state's offset the second read of a lasting jump starts (doubled
/// at each further read).
const GAP_STEP_BACK: i64 = 64;

impl Reads {
    pub(super) fn new(gap_wait: Duration) -> Self {
        Reads {
            gap_wait,
            ..Reads::default()
        }
    }

    /// Decides about the message at `offset` of `partition`, delivered at `now`.
    pub(super) fn admit(&mut self, partition: i32, offset: i64, now: Instant) -> Admit {
        let Some(&next) = self.next.get(&partition) else {
            // Nothing read and no state restored: the partition starts where it starts.
            tracing::debug!(partition, offset, "first message of the partition");
            return Admit::Take;
        };
        if offset < next {
            // Delivered again (the client reset its fetch position), or below the offset
            // the restored state stands at: the state already holds it; counting it
            // twice would shift every window of its sensors.
            self.redelivered += 1;
            if self.redelivered.is_power_of_two() {
                tracing::warn!(
                    partition,
                    offset,
                    next,
                    redelivered = self.redelivered,
                    "message delivered again by the client; skipped"
                );
            }
            return Admit::Skip;
        }
        if offset == next {
            self.gaps.remove(&partition);
            return Admit::Take;
        }
        // A jump past messages not read: the fetch started past the offset asked for.
        // Seen with tansu, whose fetch from an offset inside a record batch can return
        // the next batch (after an assignment at a snapshot's offset, or a fetch cut
        // short); a fetch from an earlier offset has them. Read again from where the
        // state stands, then from further and further back (what is below the state is
        // skipped above), until the same jump has lasted `gap_wait`: only then is it a
        // real gap (compaction, transaction markers). A message fetched before a seek
        // took effect jumps elsewhere and starts over.
        let tries = match self.gaps.get_mut(&partition) {
            Some((n, o, since, tries)) if *n == next && *o == offset => {
                if now.duration_since(*since) >= self.gap_wait {
                    tracing::warn!(
                        partition,
                        offset,
                        next,
                        "messages {next}..{offset} are missing from the partition (still after {:?}); going on from {offset}",
                        self.gap_wait
                    );
                    self.gaps.remove(&partition);
                    return Admit::Take;
                }
                *tries += 1;
                *tries
            }
            _ => {
                self.gaps.insert(partition, (next, offset, now, 0));
                tracing::warn!(
                    partition,
                    offset,
                    next,
                    "message past a gap in the partition; reading again from {next}"
                );
                0
            }
        };
        let back = if tries == 0 {
            0
        } else {
            GAP_STEP_BACK << (tries - 1).min(20)
        };
        Admit::Seek((next - back).max(0))
    }

    /// The message at `offset` of `partition` was decoded.
    pub(super) fn taken(&mut self, partition: i32, offset: i64) {
        self.next.insert(partition, offset + 1);
    }

    /// A new ownership of `partition` whose state stands at `start`.
    pub(super) fn resume(&mut self, partition: i32, start: i64) {
        self.next.insert(partition, start);
        self.gaps.remove(&partition);
    }

    /// What was read of `partition` belongs to an earlier ownership.
    pub(super) fn forget(&mut self, partition: i32) {
        self.next.remove(&partition);
        self.gaps.remove(&partition);
    }

    /// `partition` is read again from `offset` on purpose (a sink failed it).
    pub(super) fn rewind(&mut self, partition: i32, offset: i64) {
        let next = self.next.entry(partition).or_insert(offset);
        *next = (*next).min(offset);
        self.gaps.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_restored_partition_applies_from_its_snapshot_offset_whatever_comes_first() {
        // The state of partition 5 stands at 100; the client's first message is 119 (as
        // tansu delivered once): the 19 messages before it must not be skipped.
        let mut reads = Reads::new(WAIT);
        let now = Instant::now();
        reads.resume(5, 100);
        assert_eq!(reads.admit(5, 119, now), Admit::Seek(100));
        assert_eq!(
            reads.admit(5, 99, now),
            Admit::Skip,
            "below the state: applied already"
        );
        assert_eq!(reads.admit(5, 100, now), Admit::Take);
        reads.taken(5, 100);
        assert_eq!(reads.admit(5, 101, now), Admit::Take);
    }

    #[test]
    fn a_jump_is_read_again_from_further_back_and_taken_only_when_it_lasts() {
        let mut reads = Reads::new(WAIT);
        let t0 = Instant::now();
        reads.taken(0, 999);
        // tansu: a fetch from 1000, inside a record batch, returns the next batch (1032)
        // every time; a fetch from further back has them.
        let seeks: Vec<Admit> = [0, 500, 1000, 1500]
            .into_iter()
            .map(|ms| reads.admit(0, 1032, t0 + Duration::from_millis(ms)))
            .collect();
        assert_eq!(
            seeks,
            [
                Admit::Seek(1000),
                Admit::Seek(936),
                Admit::Seek(872),
                Admit::Seek(744)
            ]
        );
        assert_eq!(reads.admit(0, 990, t0), Admit::Skip, "below the state");
        assert_eq!(reads.admit(0, 1000, t0), Admit::Take);
        reads.taken(0, 1000);
        // A jump that lasts is a real gap, taken after the wait, not before.
        assert_eq!(reads.admit(0, 1010, t0), Admit::Seek(1001));
        assert_eq!(
            reads.admit(0, 1010, t0 + WAIT - Duration::from_millis(1)),
            Admit::Seek(937)
        );
        assert_eq!(reads.admit(0, 1010, t0 + WAIT), Admit::Take, "a real gap");
        reads.taken(0, 1010);
        // Messages fetched before a seek took effect jump elsewhere: each starts over.
        let t1 = t0 + 2 * WAIT;
        for (i, offset) in (1020..1026).enumerate() {
            let at = t1 + WAIT * i as u32;
            assert_eq!(reads.admit(0, offset, at), Admit::Seek(1011));
        }
        assert_eq!(reads.admit(0, 1011, t1 + 7 * WAIT), Admit::Take);
    }

    #[test]
    fn a_partition_without_state_starts_where_it_starts_and_forgets_an_earlier_ownership() {
        let mut reads = Reads::new(WAIT);
        let now = Instant::now();
        assert_eq!(reads.admit(1, 42, now), Admit::Take);
        reads.taken(1, 42);
        reads.forget(1);
        assert_eq!(reads.admit(1, 7, now), Admit::Take);
        reads.taken(1, 7);
        reads.rewind(1, 3);
        assert_eq!(reads.admit(1, 3, now), Admit::Take, "read again on purpose");
    }
}
