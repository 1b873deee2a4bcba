//! A window's checkpoint: its open windows per key, saved and restored.

use super::*;

/// The checkpoint format version.
const STATE_VERSION: u32 = 1;

/// A window's checkpoint: its shape and its open windows, per key.
#[derive(Serialize, Deserialize)]
pub(super) struct WindowState {
    version: u32,
    kind: WindowKind,
    size_ms: i64,
    slide_ms: i64,
    gap_ms: i64,
    /// Latest event time seen (`i64::MIN` before the first): of the whole input, or of
    /// one partition in a partition's snapshot.
    max_ts: i64,
    keys: Vec<KeyState>,
    /// A checkpoint of a window with partition-aligned state: each partition's windows
    /// and event time (`max_ts` and `keys` are then empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    partitions: Vec<PartitionWindows>,
}

/// One partition's open windows and event time.
#[derive(Serialize, Deserialize)]
struct PartitionWindows {
    partition: i32,
    max_ts: i64,
    keys: Vec<KeyState>,
}

/// One key's open windows.
#[derive(Serialize, Deserialize)]
struct KeyState {
    key: String,
    /// Tumbling or sliding windows by start.
    windows: Vec<SavedWindow>,
    session: Option<SavedSession>,
}

#[derive(Serialize, Deserialize)]
struct SavedWindow {
    start: i64,
    accumulators: Vec<Accumulator>,
}

#[derive(Serialize, Deserialize)]
struct SavedSession {
    start: i64,
    last: i64,
    accumulators: Vec<Accumulator>,
}

impl WindowState {
    /// Windows held.
    pub(super) fn windows(&self) -> usize {
        let count = |keys: &[KeyState]| -> usize {
            keys.iter()
                .map(|k| k.windows.len() + usize::from(k.session.is_some()))
                .sum()
        };
        count(&self.keys)
            + self
                .partitions
                .iter()
                .map(|p| count(&p.keys))
                .sum::<usize>()
    }
}

impl Window {
    pub(super) fn encode(&self, state: &WindowState) -> Result<Vec<u8>, ComponentError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(state, &mut bytes)
            .map_err(|e| ComponentError::new(format!("cannot encode window state: {e}")))?;
        Ok(bytes)
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<WindowState, ComponentError> {
        ciborium::from_reader(bytes)
            .map_err(|e| ComponentError::new(format!("cannot decode window state: {e}")))
    }

    /// A lane's open windows, per key.
    fn lane_keys(&self, lane: &Lane) -> Vec<KeyState> {
        let mut keys: Vec<KeyState> = Vec::new();
        let mut slot: HashMap<u32, usize> = HashMap::new();
        let mut entry = |key: u32, keys: &mut Vec<KeyState>| {
            *slot.entry(key).or_insert_with(|| {
                keys.push(KeyState {
                    key: self.names[key as usize].to_string(),
                    windows: Vec::new(),
                    session: None,
                });
                keys.len() - 1
            })
        };
        // In closing order, so a restored window closes its windows in the same order.
        for &(_, key, start) in &lane.closing {
            if let Some(open) = lane.windows.get(&(key, start)) {
                let i = entry(key, &mut keys);
                keys[i].windows.push(SavedWindow {
                    start,
                    accumulators: open.accumulators.clone(),
                });
            }
        }
        for &(_, key) in &lane.session_ends {
            if let Some(s) = lane.sessions.get(&key) {
                let i = entry(key, &mut keys);
                keys[i].session = Some(SavedSession {
                    start: s.start,
                    last: s.last,
                    accumulators: s.open.accumulators.clone(),
                });
            }
        }
        keys
    }

    fn shaped(&self, max_ts: i64, keys: Vec<KeyState>) -> WindowState {
        WindowState {
            version: STATE_VERSION,
            kind: self.config.kind,
            size_ms: self.config.size_ms,
            slide_ms: self.config.slide(),
            gap_ms: self.config.gap_ms,
            max_ts,
            keys,
            partitions: Vec::new(),
        }
    }

    /// Every open window: a checkpoint.
    pub(super) fn state(&self) -> WindowState {
        if self.partitioning.is_none() {
            // One lane, the whole input's.
            let mut state = self.shaped(i64::MIN, Vec::new());
            for lane in &self.lanes {
                state.max_ts = lane.max_ts;
                state.keys.extend(self.lane_keys(lane));
            }
            return state;
        }
        let mut state = self.shaped(i64::MIN, Vec::new());
        state.partitions = self
            .lanes
            .iter()
            .map(|lane| PartitionWindows {
                partition: lane.partition,
                max_ts: lane.max_ts,
                keys: self.lane_keys(lane),
            })
            .collect();
        state
    }

    /// Partition `partition`'s open windows and event time: its snapshot at a cut.
    pub(super) fn partition_state(&self, partition: i32) -> WindowState {
        match self.lanes.iter().find(|l| l.partition == partition) {
            Some(lane) => self.shaped(lane.max_ts, self.lane_keys(lane)),
            None => self.shaped(i64::MIN, Vec::new()),
        }
    }

    /// Restores `state`: its windows into the lane of partition `into` (0 when the input
    /// is not partitioned), those of its partitions into theirs.
    pub(super) fn restore_state(
        &mut self,
        state: WindowState,
        into: i32,
    ) -> Result<(), ComponentError> {
        if state.version != STATE_VERSION {
            return Err(ComponentError::new(format!(
                "window state version {} (this build reads {STATE_VERSION})",
                state.version
            )));
        }
        let (kind, size, slide, gap) = (
            self.config.kind,
            self.config.size_ms,
            self.config.slide(),
            self.config.gap_ms,
        );
        let same_shape = state.kind == kind
            && match kind {
                WindowKind::Session => state.gap_ms == gap,
                _ => state.size_ms == size && state.slide_ms == slide,
            };
        if !same_shape {
            return Err(ComponentError::new(format!(
                "the window state was checkpointed for {:?} windows of size_ms {}, slide_ms {}, \
                 gap_ms {}; the window is now {kind:?} with size_ms {size}, slide_ms {slide}, \
                 gap_ms {gap}",
                state.kind, state.size_ms, state.slide_ms, state.gap_ms
            )));
        }
        let same_aggregates = |accs: &[Accumulator]| {
            accs.len() == self.aggregates.len()
                && accs
                    .iter()
                    .zip(&self.aggregates)
                    .all(|(a, b)| a.aggregate() == *b)
        };
        let all_same = state
            .keys
            .iter()
            .chain(state.partitions.iter().flat_map(|p| &p.keys))
            .all(|k| {
                k.windows.iter().all(|w| same_aggregates(&w.accumulators))
                    && k.session
                        .as_ref()
                        .is_none_or(|s| same_aggregates(&s.accumulators))
            });
        if !all_same {
            return Err(ComponentError::new(
                "the window state was checkpointed with other aggregates",
            ));
        }
        if state.max_ts != i64::MIN || !state.keys.is_empty() {
            self.restore_lane(into, state.max_ts, state.keys);
        }
        for p in state.partitions {
            self.restore_lane(p.partition, p.max_ts, p.keys);
        }
        Ok(())
    }

    /// Restores one lane's event time and open windows.
    fn restore_lane(&mut self, partition: i32, max_ts: i64, keys: Vec<KeyState>) {
        let (size, gap) = (self.config.size_ms, self.config.gap_ms);
        let lane = self.lane(partition);
        self.lanes[lane].max_ts = max_ts;
        for k in keys {
            let (id, new) = self.keys.id(&k.key);
            let key = id as u32;
            if new {
                self.names.push(k.key.into());
                self.held.push(0);
            }
            for w in k.windows {
                let open = Open {
                    accumulators: w.accumulators,
                    finalizers: Finalizers::none(),
                    last_batch: u64::MAX,
                };
                let l = &mut self.lanes[lane];
                if l.windows.insert((key, w.start), open).is_none() {
                    l.closing.insert((w.start + size, key, w.start));
                    self.hold(key);
                }
            }
            if let Some(s) = k.session {
                let open = Open {
                    accumulators: s.accumulators,
                    finalizers: Finalizers::none(),
                    last_batch: u64::MAX,
                };
                let session = Session {
                    start: s.start,
                    last: s.last,
                    open,
                };
                let l = &mut self.lanes[lane];
                if l.sessions.insert(key, session).is_none() {
                    l.session_ends.insert((s.last + gap, key));
                    self.hold(key);
                }
            }
        }
    }
}
