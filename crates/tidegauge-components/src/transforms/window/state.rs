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
    /// Latest event time seen (`i64::MIN` before the first).
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

impl Window {
    pub(super) fn state(&self) -> WindowState {
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
        for &(_, key, start) in &self.closing {
            if let Some(open) = self.windows.get(&(key, start)) {
                let i = entry(key, &mut keys);
                keys[i].windows.push(SavedWindow {
                    start,
                    accumulators: open.accumulators.clone(),
                });
            }
        }
        for &(_, key) in &self.session_ends {
            if let Some(s) = self.sessions.get(&key) {
                let i = entry(key, &mut keys);
                keys[i].session = Some(SavedSession {
                    start: s.start,
                    last: s.last,
                    accumulators: s.open.accumulators.clone(),
                });
            }
        }
        WindowState {
            version: STATE_VERSION,
            kind: self.config.kind,
            size_ms: self.config.size_ms,
            slide_ms: self.config.slide(),
            gap_ms: self.config.gap_ms,
            max_ts: self.max_ts,
            keys,
        }
    }

    pub(super) fn restore_state(&mut self, state: WindowState) -> Result<(), ComponentError> {
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
        let all_same = state.keys.iter().all(|k| {
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
        self.max_ts = state.max_ts;
        for k in state.keys {
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
                if self.windows.insert((key, w.start), open).is_none() {
                    self.closing.insert((w.start + size, key, w.start));
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
                if self.sessions.insert(key, session).is_none() {
                    self.session_ends.insert((s.last + gap, key));
                    self.hold(key);
                }
            }
        }
        Ok(())
    }
}
