//! `alert` transform: from flagged events to incidents people can act on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::partitioned::{Moves, PartitionedState, Partitioning};
use crate::partitions::Hub;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tidegauge_core::schema::require_field;
use tidegauge_core::telemetry::OpenIncident;
use tidegauge_core::{
    BuildContext, BuildError, ComponentError, ConfigError, Transform, TransformConfig,
    TransformContext,
};

/// Turns anomalies into incidents: one `firing` event when anomalies of a sensor (or of
/// a group of fields) persist, reminders while they go on, and one `resolved` event once
/// they have stopped for a quiet period.
///
/// Per group (`group_by`, default the sensor), an incident is pending from its first
/// anomaly; a normal event cancels it. It opens (a `firing` event) once `for_events`
/// anomalies have come without a normal one between them and, if `for_ms` is set, the
/// first of them is at least `for_ms` old. It stays open while anomalies continue and
/// resolves (a `resolved` event) when none has come for `resolve_after_ms`. Every alert
/// event carries the group's fields, `status` (`firing` or `resolved`), `incident_id`,
/// `starts_at` and `ends_at` (epoch ms), `peak_score`, `anomalies` (count), the
/// `detector` and `reason` of the peak anomaly, `repeat` (0 for the first notice, n for
/// the n-th reminder) and `flapping`.
///
/// Time is event time: the latest `ts` seen across all groups, so recorded data replays
/// the same incidents. When the whole input falls silent for `idle_after_ms` of wall
/// clock, event time moves on with the wall clock from the latest `ts`, so the incidents
/// of a stream that stopped still resolve (and reminders still go out). Open incidents
/// are checkpointed with the pipeline and listed by the admin API (`GET /alerts`) and
/// `tidegauge top`.
///
/// Fed by a `kafka` source with `partition_state` (its input has `kafka_partition` and
/// `kafka_offset`, which the detectors pass through), the incidents are kept per
/// partition, each partition with its own event time (its latest `ts`), its own idle
/// wall clock and its own notice budget (`max_alerts_per_minute` then holds per
/// partition), so a partition's incidents open, remind and resolve at the same events
/// whichever instance owns it and whatever the other partitions do. Rows of partitions
/// not owned are dropped; at a cut the partition's incidents go to the hub, and on
/// assignment they come back: an incident open when its partition moved stays open under
/// the same `incident_id` at the next owner and resolves there. A partition's idle clock
/// starts again when it is restored (its former owner's wall clock does not move here).
/// The admin API lists the incidents this instance holds.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// String fields that name what an incident is about (one incident per distinct
    /// combination).
    pub group_by: Vec<String>,
    /// Field holding the event time in epoch milliseconds (Int64).
    pub ts_field: String,
    /// Anomalies in a row needed to open an incident.
    #[schemars(range(min = 1))]
    pub for_events: u64,
    /// How long anomalies must persist (from the first of them) to open an incident, in
    /// milliseconds; 0 opens on `for_events` alone.
    #[schemars(range(min = 0))]
    pub for_ms: i64,
    /// Quiet time without anomalies after which an open incident resolves, in
    /// milliseconds.
    #[schemars(range(min = 1))]
    pub resolve_after_ms: i64,
    /// While an incident stays open, a reminder (`status = firing`, `repeat` > 0) this
    /// often, in milliseconds; 0 sends none.
    #[schemars(range(min = 0))]
    pub repeat_interval_ms: i64,
    /// Most notices (`firing` and reminders) per minute of event time out of this
    /// transform, so a storm cannot flood the sink behind it; 0 for no limit. An
    /// incident whose `firing` was held back is not announced as resolved either.
    /// `resolved` events of announced incidents always pass.
    #[schemars(range(min = 0))]
    pub max_alerts_per_minute: u64,
    /// Flapping guard: a group whose incidents opened at least `flap_max_opens` times
    /// within `flap_window_ms` is flapping; its incident then resolves only after
    /// `flap_window_ms` of quiet instead of `resolve_after_ms`, so an unstable sensor gives
    /// one long incident rather than a stream of them. 0 turns the guard off.
    #[schemars(range(min = 0))]
    pub flap_window_ms: i64,
    /// Openings within `flap_window_ms` that make a group flapping.
    #[schemars(range(min = 2))]
    pub flap_max_opens: u32,
    /// Wall-clock time without any event after which event time is taken to move on with
    /// the wall clock (from the latest `ts` seen), in milliseconds: a stream that stops
    /// still resolves its incidents `resolve_after_ms` after its last anomaly. 0 keeps
    /// pure event time (a stopped stream keeps its incidents open until events flow).
    #[schemars(range(min = 0))]
    pub idle_after_ms: i64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            group_by: vec!["sensor_id".into()],
            ts_field: "ts".into(),
            for_events: 1,
            for_ms: 0,
            resolve_after_ms: 60_000,
            repeat_interval_ms: 0,
            max_alerts_per_minute: 0,
            flap_window_ms: 0,
            flap_max_opens: 3,
            idle_after_ms: 10_000,
        }
    }
}

/// The columns an alert event has besides the group's fields.
fn alert_fields() -> Vec<Field> {
    vec![
        Field::new("ts", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("incident_id", DataType::Utf8, false),
        Field::new("starts_at", DataType::Int64, false),
        Field::new("ends_at", DataType::Int64, true),
        Field::new("peak_score", DataType::Float64, false),
        Field::new("anomalies", DataType::Int64, false),
        Field::new("detector", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("repeat", DataType::Int64, false),
        Field::new("flapping", DataType::Boolean, false),
    ]
}

impl AlertConfig {
    fn check(&self, errors: &mut Vec<ConfigError>) {
        if self.group_by.is_empty() {
            errors.push(ConfigError::new("group_by", "name at least one field"));
        }
        for (i, g) in self.group_by.iter().enumerate() {
            if alert_fields().iter().any(|f| f.name() == g) {
                errors.push(ConfigError::new(
                    format!("group_by[{i}]"),
                    format!("`{g}` is a column the alert events have themselves"),
                ));
            }
        }
        // Numeric ranges are checked from the schema (`ranges::check`) before this runs.
    }
}

impl TransformConfig for AlertConfig {
    const TYPE: &'static str = "alert";

    fn validate(&self, input: &SchemaRef) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        self.check(&mut errors);
        for (i, g) in self.group_by.iter().enumerate() {
            if let Err(mut e) = require_field(input, "group_by", g, &[DataType::Utf8]) {
                e.path = format!("group_by[{i}]");
                errors.push(e);
            }
        }
        if let Err(e) = require_field(input, "ts_field", &self.ts_field, &[DataType::Int64]) {
            errors.push(e);
        }
        if let Err(e) = require_field(input, "input", "is_anomaly", &[DataType::Boolean]) {
            errors.push(ConfigError::new(
                "inputs",
                format!("{}; put a detector before `alert`", e.message),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut fields: Vec<Field> = self
            .group_by
            .iter()
            .map(|g| Field::new(g, DataType::Utf8, false))
            .collect();
        fields.extend(alert_fields());
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build(
        &self,
        input: SchemaRef,
        output: SchemaRef,
        cx: BuildContext,
    ) -> Result<Box<dyn Transform>, BuildError> {
        let alert = self.alert(&input, output)?;
        Ok(Box::new(alert.partitioned(
            &input,
            &crate::partitions::process_hub(),
            cx.component.id(),
        )))
    }
}

impl AlertConfig {
    /// The transform, its incidents kept per instance (see [`Alert::partitioned`]).
    fn alert(&self, input: &SchemaRef, output: SchemaRef) -> Result<Alert, BuildError> {
        let find = |name: &str| tidegauge_core::schema::field_index(input, name);
        let optional = |name: &str, t: &DataType| {
            input
                .index_of(name)
                .ok()
                .filter(|&i| input.field(i).data_type() == t)
        };
        Ok(Alert {
            group: self
                .group_by
                .iter()
                .map(|g| find(g))
                .collect::<Result<_, _>>()?,
            ts: find(&self.ts_field)?,
            flag: find("is_anomaly")?,
            score: optional("anomaly_score", &DataType::Float64),
            detector: optional("detector", &DataType::Utf8),
            reason: optional("reason", &DataType::Utf8),
            rules: Rules::from(self),
            lanes: vec![Lane {
                partition: 0,
                book: Incidents::new(Rules::from(self)),
                last_input: None,
            }],
            output,
            published: false,
            idle_after_ms: self.idle_after_ms,
            partitioning: None,
        })
    }
}

/// The settings the state machine follows.
#[derive(Clone, Debug)]
struct Rules {
    for_events: u64,
    for_ms: i64,
    resolve_after_ms: i64,
    repeat_interval_ms: i64,
    max_per_minute: u64,
    flap_window_ms: i64,
    flap_max_opens: u32,
}

impl From<&AlertConfig> for Rules {
    fn from(c: &AlertConfig) -> Self {
        Rules {
            for_events: c.for_events,
            for_ms: c.for_ms,
            resolve_after_ms: c.resolve_after_ms,
            repeat_interval_ms: c.repeat_interval_ms,
            max_per_minute: c.max_alerts_per_minute,
            flap_window_ms: c.flap_window_ms,
            flap_max_opens: c.flap_max_opens,
        }
    }
}

/// One anomalous event as the state machine sees it.
#[derive(Clone, Debug, Default)]
struct Flagged<'a> {
    score: f64,
    detector: Option<&'a str>,
    reason: Option<&'a str>,
}

/// An incident, open or pending.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Incident {
    starts_at: i64,
    last_anomaly: i64,
    anomalies: u64,
    peak_score: f64,
    detector: Option<String>,
    reason: Option<String>,
    /// Notices sent so far (the first `firing` counts; 0 while pending).
    notices: u64,
    last_notice: i64,
    /// The `firing` event went out (not held back by the rate limit).
    announced: bool,
    flapping: bool,
}

impl Incident {
    fn start(ts: i64, f: &Flagged<'_>) -> Self {
        Incident {
            starts_at: ts,
            last_anomaly: ts,
            anomalies: 1,
            peak_score: f.score,
            detector: f.detector.map(Into::into),
            reason: f.reason.map(Into::into),
            notices: 0,
            last_notice: ts,
            announced: false,
            flapping: false,
        }
    }

    fn add(&mut self, ts: i64, f: &Flagged<'_>) {
        self.last_anomaly = self.last_anomaly.max(ts);
        self.anomalies += 1;
        if f.score > self.peak_score || self.reason.is_none() {
            self.peak_score = self.peak_score.max(f.score);
            if f.reason.is_some() {
                self.detector = f.detector.map(Into::into);
                self.reason = f.reason.map(Into::into);
            }
        }
    }
}

/// A group's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Group {
    /// Anomalies in a row, not (yet) an incident.
    pending: Option<Incident>,
    open: Option<Incident>,
    /// When this group's incidents opened, within the flap window.
    opens: VecDeque<i64>,
}

/// What an alert event says.
#[derive(Clone, Debug, PartialEq)]
struct Notice {
    key: String,
    ts: i64,
    status: Status,
    incident: Incident,
    repeat: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Firing,
    Resolved,
}

/// Every group's incidents, and the notice budget: the state machine, free of Arrow.
#[derive(Debug)]
struct Incidents {
    rules: Rules,
    groups: BTreeMap<String, Group>,
    /// Latest event time seen.
    now: i64,
    /// Rate limit: notices left, and when the budget was last refilled.
    tokens: f64,
    refilled_at: i64,
    /// Notices held back by the rate limit.
    held_back: u64,
}

/// Checkpointed form of [`Incidents`]: of the whole input, or of one partition in a
/// partition's snapshot.
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    groups: BTreeMap<String, Group>,
    now: i64,
    tokens: f64,
    refilled_at: i64,
    /// A checkpoint of an alert with partition-aligned state: each partition's incidents
    /// (the fields above then hold none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    partitions: Vec<(i32, Saved)>,
}

const STATE_VERSION: u32 = 1;

impl Incidents {
    fn new(rules: Rules) -> Self {
        Incidents {
            tokens: rules.max_per_minute as f64,
            rules,
            groups: BTreeMap::new(),
            now: i64::MIN,
            refilled_at: i64::MIN,
            held_back: 0,
        }
    }

    /// Takes one event of group `key` at `ts` (`flagged`: it is an anomaly); appends the
    /// notices it causes.
    fn event(&mut self, key: &str, ts: i64, flagged: Option<Flagged<'_>>, out: &mut Vec<Notice>) {
        self.now = self.now.max(ts);
        if !self.groups.contains_key(key) {
            self.groups.insert(key.to_string(), Group::default());
        }
        // This group first, at its own event's time: a quiet period that ended before
        // this event resolves the incident before the event counts.
        self.settle(key, ts, out);
        let rules = self.rules.clone();
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        let Some(f) = flagged else {
            group.pending = None;
            return;
        };
        if let Some(open) = &mut group.open {
            open.add(ts, &f);
            return;
        }
        let p = match &mut group.pending {
            Some(p) => {
                p.add(ts, &f);
                p
            }
            None => group.pending.insert(Incident::start(ts, &f)),
        };
        if p.anomalies < rules.for_events || ts - p.starts_at < rules.for_ms {
            return;
        }
        let mut incident = group
            .pending
            .take()
            .unwrap_or_else(|| Incident::start(ts, &f));
        if rules.flap_window_ms > 0 {
            while group
                .opens
                .front()
                .is_some_and(|&t| ts - t >= rules.flap_window_ms)
            {
                group.opens.pop_front();
            }
            group.opens.push_back(ts);
            incident.flapping = group.opens.len() >= rules.flap_max_opens as usize;
        }
        incident.last_notice = ts;
        incident.notices = 1;
        incident.announced = self.spend(ts);
        if incident.announced {
            out.push(Notice {
                key: key.to_string(),
                ts,
                status: Status::Firing,
                incident: incident.clone(),
                repeat: 0,
            });
        }
        if let Some(group) = self.groups.get_mut(key) {
            group.open = Some(incident);
        }
    }

    /// Resolutions and reminders due at the latest event time, for every group.
    fn advance(&mut self, out: &mut Vec<Notice>) {
        let keys: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.open.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let now = self.now;
        for k in keys {
            self.settle(&k, now, out);
        }
    }

    /// Resolves `key`'s incident if quiet long enough at `now`, or reminds if due.
    fn settle(&mut self, key: &str, now: i64, out: &mut Vec<Notice>) {
        let rules = self.rules.clone();
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        let Some(open) = &group.open else {
            return;
        };
        let quiet = if open.flapping {
            rules.flap_window_ms.max(rules.resolve_after_ms)
        } else {
            rules.resolve_after_ms
        };
        if now - open.last_anomaly >= quiet {
            let Some(incident) = group.open.take() else {
                return;
            };
            if incident.announced {
                out.push(Notice {
                    key: key.to_string(),
                    ts: incident.last_anomaly + quiet,
                    status: Status::Resolved,
                    repeat: incident.notices - 1,
                    incident,
                });
            }
            return;
        }
        if rules.repeat_interval_ms > 0 && now - open.last_notice >= rules.repeat_interval_ms {
            let announce = self.spend(now);
            let Some(open) = self.groups.get_mut(key).and_then(|g| g.open.as_mut()) else {
                return;
            };
            open.last_notice = now;
            if announce {
                open.notices += 1;
                // A reminder of an incident whose first notice was held back is its
                // first word: from now on it is announced.
                open.announced = true;
                out.push(Notice {
                    key: key.to_string(),
                    ts: now,
                    status: Status::Firing,
                    repeat: open.notices - 1,
                    incident: open.clone(),
                });
            }
        }
    }

    /// Takes one notice from the budget at `now`; false when the budget is spent.
    fn spend(&mut self, now: i64) -> bool {
        let max = self.rules.max_per_minute as f64;
        if max == 0.0 {
            return true;
        }
        if self.refilled_at != i64::MIN {
            let elapsed = (now - self.refilled_at).max(0) as f64;
            self.tokens = (self.tokens + elapsed * max / 60_000.0).min(max);
        }
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.held_back += 1;
            false
        }
    }

    fn open(&self) -> impl Iterator<Item = (&String, &Incident)> {
        self.groups
            .iter()
            .filter_map(|(k, g)| g.open.as_ref().map(|i| (k, i)))
    }

    fn saved(&self) -> Saved {
        Saved {
            version: STATE_VERSION,
            groups: self.groups.clone(),
            now: self.now,
            tokens: self.tokens,
            refilled_at: self.refilled_at,
            partitions: Vec::new(),
        }
    }

    #[cfg(test)]
    fn save(&self) -> Result<Vec<u8>, ComponentError> {
        encode(&self.saved())
    }

    #[cfg(test)]
    fn load(&mut self, bytes: &[u8]) -> Result<(), ComponentError> {
        self.load_saved(decode(bytes)?);
        Ok(())
    }

    fn load_saved(&mut self, saved: Saved) {
        self.groups = saved.groups;
        self.now = saved.now;
        self.tokens = saved.tokens;
        self.refilled_at = saved.refilled_at;
    }
}

fn encode(saved: &Saved) -> Result<Vec<u8>, ComponentError> {
    let mut bytes = Vec::new();
    ciborium::into_writer(saved, &mut bytes)
        .map_err(|e| ComponentError::new(format!("cannot encode incidents: {e}")))?;
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> Result<Saved, ComponentError> {
    let saved: Saved = ciborium::from_reader(bytes)
        .map_err(|e| ComponentError::new(format!("not an alert state: {e}")))?;
    if saved.version != STATE_VERSION {
        return Err(ComponentError::new(format!(
            "alert state version {} (this build reads {STATE_VERSION})",
            saved.version
        )));
    }
    Ok(saved)
}

/// The incidents of one partition of the input (of the whole input when it is not
/// partitioned), with that partition's event time and idle clock.
struct Lane {
    partition: i32,
    book: Incidents,
    /// When the partition's last rows arrived (wall clock), and the event time they left.
    last_input: Option<(SystemTime, i64)>,
}

struct Alert {
    group: Vec<usize>,
    ts: usize,
    flag: usize,
    score: Option<usize>,
    detector: Option<usize>,
    reason: Option<usize>,
    rules: Rules,
    /// The incidents per partition, by partition (one lane, 0, when the input is not
    /// partitioned).
    lanes: Vec<Lane>,
    output: SchemaRef,
    /// The open incidents shown by the admin API are up to date.
    published: bool,
    idle_after_ms: i64,
    /// With partition-aligned state (see [`AlertConfig`]).
    partitioning: Option<Partitioning>,
}

/// Separates the values of a multi-field group in its key.
const GROUP_SEPARATOR: char = '\u{1f}';

impl Alert {
    /// With partition columns in its input (a `kafka` source with `partition_state`):
    /// the incidents are kept per partition, registered with `hub` as `id`.
    fn partitioned(mut self, input: &Schema, hub: &Arc<Hub>, id: &str) -> Self {
        self.partitioning = Partitioning::new(input, hub, id);
        if self.partitioning.is_some() {
            self.lanes.clear();
        }
        self
    }

    /// The index of `partition`'s lane, made if missing (lanes stay in partition order).
    fn lane(&mut self, partition: i32) -> usize {
        match self.lanes.binary_search_by_key(&partition, |l| l.partition) {
            Ok(i) => i,
            Err(i) => {
                self.lanes.insert(
                    i,
                    Lane {
                        partition,
                        book: Incidents::new(self.rules.clone()),
                        last_input: None,
                    },
                );
                i
            }
        }
    }

    /// The incidents open now, of every partition held.
    fn open(&self) -> impl Iterator<Item = (&String, &Incident)> {
        self.lanes.iter().flat_map(|l| l.book.open())
    }

    /// Takes in the rows of `batch` (with partition-aligned state, all of partitions
    /// owned, each in its partition's lane) and emits the notices they cause.
    fn apply(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let group: Vec<_> = self
            .group
            .iter()
            .map(|&i| batch.column(i).as_string::<i32>())
            .collect();
        let ts = batch.column(self.ts).as_primitive::<Int64Type>();
        let flag = batch.column(self.flag).as_boolean();
        let score = self
            .score
            .map(|i| batch.column(i).as_primitive::<Float64Type>());
        let text = |i: Option<usize>| i.map(|i| batch.column(i).as_string::<i32>());
        let (detector, reason) = (text(self.detector), text(self.reason));
        let partitions = self
            .partitioning
            .as_ref()
            .map(|p| batch.column(p.partition).as_primitive::<Int64Type>());
        let mut notices = Vec::new();
        let mut key = String::new();
        let before = self.open().count();
        // Without partitions the one lane takes every batch, rows or not.
        let mut touched: BTreeSet<usize> = BTreeSet::new();
        if partitions.is_none() {
            touched.insert(0);
        }
        let (mut lane, mut lane_partition) = (0, None);
        for row in 0..batch.num_rows() {
            if ts.is_null(row) || group.iter().any(|g| g.is_null(row)) {
                continue;
            }
            if let Some(parts) = partitions {
                let q = parts.value(row) as i32;
                if lane_partition != Some(q) {
                    lane = self.lane(q);
                    lane_partition = Some(q);
                    touched.insert(lane);
                }
            }
            key.clear();
            for (n, g) in group.iter().enumerate() {
                if n > 0 {
                    key.push(GROUP_SEPARATOR);
                }
                key.push_str(g.value(row));
            }
            let flagged = (flag.is_valid(row) && flag.value(row)).then(|| Flagged {
                score: score
                    .filter(|s| s.is_valid(row))
                    .map_or(1.0, |s| s.value(row)),
                detector: detector.filter(|d| d.is_valid(row)).map(|d| d.value(row)),
                reason: reason.filter(|r| r.is_valid(row)).map(|r| r.value(row)),
            });
            self.lanes[lane]
                .book
                .event(&key, ts.value(row), flagged, &mut notices);
        }
        let arrived = SystemTime::now();
        for i in touched {
            let l = &mut self.lanes[i];
            l.book.advance(&mut notices);
            l.last_input = Some((arrived, l.book.now));
        }
        self.emit(notices, before, cx)
    }

    fn notices_batch(&self, notices: &[Notice]) -> Result<RecordBatch, ComponentError> {
        let mut group: Vec<StringBuilder> =
            self.group.iter().map(|_| StringBuilder::new()).collect();
        let mut ts = Int64Builder::new();
        let mut status = StringBuilder::new();
        let mut id = StringBuilder::new();
        let mut starts = Int64Builder::new();
        let mut ends = Int64Builder::new();
        let mut peak = Float64Builder::new();
        let mut count = Int64Builder::new();
        let mut detector = StringBuilder::new();
        let mut reason = StringBuilder::new();
        let mut repeat = Int64Builder::new();
        let mut flapping = BooleanBuilder::new();
        for n in notices {
            for (b, part) in group.iter_mut().zip(n.key.split(GROUP_SEPARATOR)) {
                b.append_value(part);
            }
            let i = &n.incident;
            ts.append_value(n.ts);
            status.append_value(match n.status {
                Status::Firing => "firing",
                Status::Resolved => "resolved",
            });
            id.append_value(incident_id(&n.key, i.starts_at));
            starts.append_value(i.starts_at);
            match n.status {
                Status::Resolved => ends.append_value(n.ts),
                Status::Firing => ends.append_null(),
            }
            peak.append_value(i.peak_score);
            count.append_value(i.anomalies as i64);
            detector.append_option(i.detector.as_deref());
            reason.append_option(i.reason.as_deref());
            repeat.append_value(n.repeat as i64);
            flapping.append_value(i.flapping);
        }
        let mut columns: Vec<ArrayRef> = group
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.extend([
            Arc::new(ts.finish()) as ArrayRef,
            Arc::new(status.finish()),
            Arc::new(id.finish()),
            Arc::new(starts.finish()),
            Arc::new(ends.finish()),
            Arc::new(peak.finish()),
            Arc::new(count.finish()),
            Arc::new(detector.finish()),
            Arc::new(reason.finish()),
            Arc::new(repeat.finish()),
            Arc::new(flapping.finish()),
        ]);
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }

    /// Publishes the open incidents when they changed and emits the notices.
    fn emit(
        &mut self,
        notices: Vec<Notice>,
        open_before: usize,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        if !notices.is_empty() || open_before != self.open().count() || !self.published {
            self.publish(cx);
        }
        if !notices.is_empty() {
            cx.emit(self.notices_batch(&notices)?);
        }
        Ok(())
    }

    /// Shows the open incidents in the admin API.
    fn publish(&mut self, cx: &TransformContext) {
        let open = self
            .open()
            .map(|(k, i)| OpenIncident {
                key: k.replace(GROUP_SEPARATOR, "/"),
                incident_id: incident_id(k, i.starts_at),
                starts_at_ms: i.starts_at,
                last_anomaly_ms: i.last_anomaly,
                anomalies: i.anomalies,
                peak_score: i.peak_score,
                detector: i.detector.clone(),
                reason: i.reason.clone(),
                flapping: i.flapping,
            })
            .collect();
        cx.component().telemetry().set_open_incidents(open);
        self.published = true;
    }
}

/// The event time a silent input has reached: the event time `event_now` it had when
/// the last batch came at `at`, plus the wall-clock time since, once that is at least
/// `idle_after_ms` (0: never).
fn idle_event_time(
    at: SystemTime,
    event_now: i64,
    now: SystemTime,
    idle_after_ms: i64,
) -> Option<i64> {
    if idle_after_ms <= 0 || event_now == i64::MIN {
        return None;
    }
    let idle = now.duration_since(at).ok()?.as_millis();
    let idle = i64::try_from(idle).ok()?;
    (idle >= idle_after_ms).then(|| event_now.saturating_add(idle))
}

/// Names an incident: its group and when it started.
fn incident_id(key: &str, starts_at: i64) -> String {
    format!("{}@{starts_at}", key.replace(GROUP_SEPARATOR, "/"))
}

impl Transform for Alert {
    fn process(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        // Without partitions, straight to the rows.
        super::partitioned::process(self, batch, cx)
    }

    fn tick_interval(&self) -> Option<Duration> {
        let idle = (self.idle_after_ms > 0).then(|| {
            let step = self.idle_after_ms.min(self.rules.resolve_after_ms) / 4;
            Duration::from_millis(step.clamp(10, 1_000) as u64)
        });
        // Cuts and ownership changes are looked at between batches too.
        let upkeep = self
            .partitioning
            .as_ref()
            .map(|_| Duration::from_millis(100));
        match (idle, upkeep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Cuts and ownership changes; then a silent input (each partition on its own): event
    /// time moves on with the wall clock once it has been silent for `idle_after_ms`.
    fn tick(&mut self, now: SystemTime, cx: &mut TransformContext) -> Result<(), ComponentError> {
        if self.partitioning.is_some() {
            super::partitioned::upkeep(self, cx)?;
        }
        let before = self.open().count();
        let mut notices = Vec::new();
        for lane in &mut self.lanes {
            let Some((at, event_now)) = lane.last_input else {
                continue;
            };
            let Some(now) = idle_event_time(at, event_now, now, self.idle_after_ms) else {
                continue;
            };
            if now <= lane.book.now || lane.book.open().next().is_none() {
                continue;
            }
            lane.book.now = now;
            lane.book.advance(&mut notices);
        }
        if notices.is_empty() && before == self.open().count() && self.published {
            return Ok(());
        }
        self.emit(notices, before, cx)
    }

    fn flush(&mut self, cx: &mut TransformContext) -> Result<(), ComponentError> {
        if self.partitioning.is_some() {
            super::partitioned::finish(self, cx)?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<Option<Vec<u8>>, ComponentError> {
        if self.partitioning.is_none() {
            let mut saved = Incidents::new(self.rules.clone()).saved();
            if let Some(lane) = self.lanes.first() {
                saved = lane.book.saved();
            }
            return encode(&saved).map(Some);
        }
        let mut saved = Incidents::new(self.rules.clone()).saved();
        saved.partitions = self
            .lanes
            .iter()
            .map(|l| (l.partition, l.book.saved()))
            .collect();
        encode(&saved).map(Some)
    }

    /// Restores a checkpoint; one written without partitions goes to lane 0.
    fn restore(&mut self, state: &[u8]) -> Result<(), ComponentError> {
        let mut saved = decode(state)?;
        let partitions = std::mem::take(&mut saved.partitions);
        self.lanes.clear();
        if partitions.is_empty() || !saved.groups.is_empty() {
            let i = self.lane(0);
            self.lanes[i].book.load_saved(saved);
        }
        for (q, part) in partitions {
            let i = self.lane(q);
            self.lanes[i].book.load_saved(part);
        }
        self.published = false;
        Ok(())
    }
}

impl PartitionedState for Alert {
    fn partitioning(&mut self) -> Option<&mut Partitioning> {
        self.partitioning.as_mut()
    }

    fn holding(&self) -> BTreeSet<i32> {
        self.lanes.iter().map(|l| l.partition).collect()
    }

    /// Forgets the incidents of partitions given up, restores those of partitions
    /// assigned.
    fn apply_moves(
        &mut self,
        moves: Moves,
        cx: &mut TransformContext,
    ) -> Result<(usize, usize), ComponentError> {
        let before = self
            .lanes
            .iter()
            .map(|l| l.book.groups.len())
            .sum::<usize>();
        self.lanes.retain(|l| !moves.dropped.contains(&l.partition));
        let dropped = before
            - self
                .lanes
                .iter()
                .map(|l| l.book.groups.len())
                .sum::<usize>();
        let mut restored = 0;
        let arrived = SystemTime::now();
        for (q, bytes) in moves.restored {
            let saved = decode(&bytes)?;
            let i = self.lane(q);
            let lane = &mut self.lanes[i];
            lane.book.load_saved(saved);
            // The partition's idle clock starts when it arrives here.
            lane.last_input = Some((arrived, lane.book.now));
            restored += lane.book.groups.len();
        }
        self.publish(cx);
        Ok((dropped, restored))
    }

    fn apply_rows(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        self.apply(batch, cx)
    }

    /// Hands the hub each cut partition's incidents, event time and notice budget.
    fn snapshot(
        &mut self,
        cuts: &[(i32, i64)],
        _cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        for &(q, offset) in cuts {
            let saved = match self.lanes.iter().find(|l| l.partition == q) {
                Some(lane) => lane.book.saved(),
                None => Incidents::new(self.rules.clone()).saved(),
            };
            let bytes = encode(&saved)?;
            if let Some(p) = &self.partitioning {
                p.hand_in(q, offset, bytes);
            }
        }
        Ok(())
    }
}

tidegauge_core::register_transform!(AlertConfig);

#[cfg(test)]
mod partition_tests;
#[cfg(test)]
mod tests;
