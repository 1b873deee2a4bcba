//! A bounded, in-memory recent history per sensor, fed by every detector's output, for
//! the dashboard's charts.
//!
//! At most `max_sensors` series (one per detector and sensor), each the last `points`
//! verdicts: time, value, the detector's statistic, score and flag. Memory is bounded by
//! [`SensorHistory::bytes_bound`]: [`POINT_BYTES`] a point plus [`SERIES_OVERHEAD_BYTES`]
//! a series. When every slot is taken, a sensor seen for the first time gets one only
//! if the row is flagged: it replaces the series whose last anomaly is the oldest (one
//! that never had any first). Sensors turned away are counted
//! ([`HistoryStats::untracked_rows`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_schema::{DataType, SchemaRef};

use crate::component::VerdictColumns;

/// One verdict of a detector on one sensor.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Point {
    /// When the verdict was made, milliseconds since the Unix epoch (wall clock).
    pub t_ms: i64,
    /// The sensor's value (`value` column), when the detector's output has one.
    pub value: Option<f64>,
    /// The detector's own statistic (`z`, `statistic`, ...), when defined.
    pub statistic: Option<f64>,
    /// `anomaly_score`, 0..1, 0.5 at the detector's threshold.
    pub score: f32,
    /// `is_anomaly`.
    pub anomaly: bool,
}

/// Bytes a stored point takes.
pub const POINT_BYTES: usize = std::mem::size_of::<Point>();
// What the documentation of `[admin] history_points` states (48 bytes a point).
const _: () = assert!(POINT_BYTES <= 48);
/// Bytes a series takes besides its points (ids, counters, table entry), an upper bound
/// for ids of up to 64 bytes.
pub const SERIES_OVERHEAD_BYTES: usize = 256;

/// One detector's recent verdicts on one sensor.
#[derive(Debug)]
struct Series {
    component: Arc<str>,
    sensor: Box<str>,
    points: VecDeque<Point>,
    /// Points ever recorded (a live feed sends those past the count it last saw).
    total: u64,
    anomalies: u64,
    last_anomaly_ms: Option<i64>,
}

/// A series as listed: ids and latest figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeriesSummary {
    /// The detector's component id.
    pub component: String,
    /// The sensor id.
    pub sensor: String,
    /// The latest point.
    pub last: Option<Point>,
    /// Points ever recorded.
    pub total: u64,
    /// Anomalies ever recorded.
    pub anomalies: u64,
    /// Time of the latest anomaly.
    pub last_anomaly_ms: Option<i64>,
    /// Highest score among the points considered (for the top list).
    pub peak_score: f32,
    /// Anomalies among the points considered (for the top list).
    pub recent_anomalies: u64,
}

/// A series' points.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeriesPoints {
    /// The detector's component id.
    pub component: String,
    /// The sensor id.
    pub sensor: String,
    /// Name of the detector's statistic column.
    pub statistic: Option<String>,
    /// Points ever recorded; the last point below is number `total`.
    pub total: u64,
    /// The points kept, oldest first.
    pub points: Vec<Point>,
}

/// Counters of the store.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HistoryStats {
    /// Most series kept.
    pub max_sensors: usize,
    /// Most points kept a series.
    pub points_per_sensor: usize,
    /// Series kept now.
    pub tracked: usize,
    /// Upper bound of the memory the store may take, bytes.
    pub bytes_bound: usize,
    /// Rows of sensors that found no slot.
    pub untracked_rows: u64,
    /// Series replaced by a sensor with an anomaly.
    pub evicted: u64,
}

#[derive(Default)]
struct Inner {
    /// Component -> sensor -> slot in `series` (looked up by `&str`, no allocation a row).
    index: HashMap<Arc<str>, HashMap<Box<str>, usize>>,
    series: Vec<Series>,
    statistic: HashMap<Arc<str>, String>,
    untracked_rows: u64,
    evicted: u64,
}

/// The store; shared by the detectors' threads (writers) and the admin API (readers).
pub struct SensorHistory {
    max_sensors: usize,
    points: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for SensorHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorHistory")
            .field("max_sensors", &self.max_sensors)
            .field("points", &self.points)
            .finish()
    }
}

impl SensorHistory {
    /// A store of at most `max_sensors` series of `points` points each.
    pub fn new(max_sensors: usize, points: usize) -> Self {
        SensorHistory {
            max_sensors,
            points: points.max(1),
            inner: Mutex::default(),
        }
    }

    /// The most memory the store takes, in bytes.
    pub fn bytes_bound(&self) -> usize {
        self.max_sensors * (SERIES_OVERHEAD_BYTES + POINT_BYTES * self.points)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves the table whole between statements that could panic
        // (none do on valid indices): a poisoned lock still holds a usable table.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `points` of `component` (its statistic column named `statistic`), each
    /// with its sensor id.
    pub fn record<'a>(
        &self,
        component: &Arc<str>,
        statistic: Option<&str>,
        points: impl Iterator<Item = (&'a str, Point)>,
    ) {
        let cap = self.points;
        let mut inner = self.lock();
        if let Some(name) = statistic
            && !inner.statistic.contains_key(component)
        {
            inner.statistic.insert(component.clone(), name.to_string());
        }
        for (sensor, point) in points {
            let found = inner.index.get(component).and_then(|m| m.get(sensor));
            let slot = match found {
                Some(&i) => Some(i),
                None => self.admit(&mut inner, component, sensor, point.anomaly),
            };
            let Some(i) = slot else {
                inner.untracked_rows += 1;
                continue;
            };
            let s = &mut inner.series[i];
            if s.points.len() == cap {
                s.points.pop_front();
            }
            s.points.push_back(point);
            s.total += 1;
            if point.anomaly {
                s.anomalies += 1;
                s.last_anomaly_ms = Some(point.t_ms);
            }
        }
    }

    /// A slot for a new series, or `None` when full and the row is not an anomaly.
    fn admit(
        &self,
        inner: &mut Inner,
        component: &Arc<str>,
        sensor: &str,
        anomaly: bool,
    ) -> Option<usize> {
        let full = inner.series.len() >= self.max_sensors;
        if full && !anomaly {
            return None;
        }
        let fresh = Series {
            component: component.clone(),
            sensor: sensor.into(),
            // Exactly the cap: the ring never reallocates and never takes more.
            points: VecDeque::with_capacity(self.points),
            total: 0,
            anomalies: 0,
            last_anomaly_ms: None,
        };
        let slot = if full {
            let victim = inner
                .series
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| (s.last_anomaly_ms.unwrap_or(i64::MIN), s.total))
                .map(|(i, _)| i)?;
            let old = std::mem::replace(&mut inner.series[victim], fresh);
            if let Some(m) = inner.index.get_mut(&old.component) {
                m.remove(&old.sensor);
            }
            inner.evicted += 1;
            victim
        } else {
            inner.series.push(fresh);
            inner.series.len() - 1
        };
        inner
            .index
            .entry(component.clone())
            .or_default()
            .insert(sensor.into(), slot);
        Some(slot)
    }

    /// The store's counters.
    pub fn stats(&self) -> HistoryStats {
        let inner = self.lock();
        HistoryStats {
            max_sensors: self.max_sensors,
            points_per_sensor: self.points,
            tracked: inner.series.len(),
            bytes_bound: self.bytes_bound(),
            untracked_rows: inner.untracked_rows,
            evicted: inner.evicted,
        }
    }

    fn summary(s: &Series, since_ms: i64) -> SeriesSummary {
        let recent = s.points.iter().rev().take_while(|p| p.t_ms >= since_ms);
        let (peak, count) = recent.fold((0f32, 0u64), |(peak, n), p| {
            (peak.max(p.score), n + u64::from(p.anomaly))
        });
        SeriesSummary {
            component: s.component.to_string(),
            sensor: s.sensor.to_string(),
            last: s.points.back().copied(),
            total: s.total,
            anomalies: s.anomalies,
            last_anomaly_ms: s.last_anomaly_ms,
            peak_score: peak,
            recent_anomalies: count,
        }
    }

    /// Series whose sensor id contains `text` (case-insensitive), sorted by sensor then
    /// component, at most `limit`; and how many matched in all.
    pub fn search(&self, text: &str, limit: usize) -> (usize, Vec<SeriesSummary>) {
        let needle = text.to_lowercase();
        let inner = self.lock();
        let mut found: Vec<&Series> = inner
            .series
            .iter()
            .filter(|s| needle.is_empty() || s.sensor.to_lowercase().contains(&needle))
            .collect();
        let matched = found.len();
        let order =
            |a: &&Series, b: &&Series| (&a.sensor, &a.component).cmp(&(&b.sensor, &b.component));
        // The first `limit` in order without sorting every match (the page asks for 200
        // among as many as 100,000).
        if limit < found.len() {
            found.select_nth_unstable_by(limit, order);
            found.truncate(limit);
        }
        found.sort_by(order);
        let list = found
            .into_iter()
            .take(limit)
            .map(|s| Self::summary(s, i64::MAX))
            .collect();
        (matched, list)
    }

    /// The `limit` series with the most anomalies since `since_ms`, then the highest
    /// score; only those with an anomaly or a score above zero.
    pub fn top(&self, since_ms: i64, limit: usize) -> Vec<SeriesSummary> {
        let inner = self.lock();
        let mut all: Vec<SeriesSummary> = inner
            .series
            .iter()
            .filter(|s| s.last_anomaly_ms.is_some_and(|t| t >= since_ms))
            .map(|s| Self::summary(s, since_ms))
            .collect();
        all.sort_by(|a, b| {
            b.recent_anomalies
                .cmp(&a.recent_anomalies)
                .then(b.peak_score.total_cmp(&a.peak_score))
        });
        all.truncate(limit);
        all
    }

    /// The points of `sensor` as seen by `component` (by any detector when `None`: the
    /// first in component order), those after number `after` only when given.
    pub fn points(
        &self,
        sensor: &str,
        component: Option<&str>,
        after: Option<u64>,
    ) -> Option<SeriesPoints> {
        let inner = self.lock();
        // Through the index: a live feed asks twice a second, whatever the fleet's size.
        let slot = inner
            .index
            .iter()
            .filter(|(c, _)| component.is_none_or(|want| &***c == want))
            .filter_map(|(c, m)| m.get(sensor).map(|&i| (c, i)))
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(_, i)| i)?;
        let s = &inner.series[slot];
        let skip = match after {
            Some(seen) => {
                let new = s.total.saturating_sub(seen) as usize;
                s.points.len().saturating_sub(new)
            }
            None => 0,
        };
        Some(SeriesPoints {
            component: s.component.to_string(),
            sensor: s.sensor.to_string(),
            statistic: inner.statistic.get(&s.component).cloned(),
            total: s.total,
            points: s.points.iter().skip(skip).copied().collect(),
        })
    }
}

/// Reads a detector's output batch into [`Point`]s: the columns it found.
pub(super) struct HistoryColumns {
    key: usize,
    value: Option<usize>,
    statistic: Option<(usize, String)>,
    score: usize,
    flag: usize,
}

impl HistoryColumns {
    /// The columns a detector declared, found in its output; `None` when the key, score
    /// or flag is missing (or not of its type).
    pub(super) fn new(output: &SchemaRef, columns: &VerdictColumns) -> Option<Self> {
        use super::anomaly_tap::typed_column;
        let float = |name: Option<&str>| typed_column(output, name, &DataType::Float64);
        Some(HistoryColumns {
            key: typed_column(output, columns.key.as_deref(), &DataType::Utf8)?,
            value: float(columns.value.as_deref()),
            statistic: columns
                .statistic
                .as_deref()
                .and_then(|name| float(Some(name)).map(|i| (i, name.to_string()))),
            score: float(Some(&columns.score))?,
            flag: typed_column(output, Some(&columns.flag), &DataType::Boolean)?,
        })
    }

    /// Records every row of `batch` into `history` under `component`.
    pub(super) fn record(
        &self,
        batch: &RecordBatch,
        component: &Arc<str>,
        history: &SensorHistory,
        now_ms: i64,
    ) {
        use arrow_array::Array;
        use arrow_array::types::Float64Type;
        let (Some(keys), Some(scores), Some(flags)) = (
            batch.column(self.key).as_string_opt::<i32>(),
            batch.column(self.score).as_primitive_opt::<Float64Type>(),
            batch.column(self.flag).as_boolean_opt(),
        ) else {
            return;
        };
        let floats =
            |i: Option<usize>| i.and_then(|i| batch.column(i).as_primitive_opt::<Float64Type>());
        let values = floats(self.value);
        let stats = floats(self.statistic.as_ref().map(|(i, _)| *i));
        let at = |c: Option<&arrow_array::Float64Array>, r: usize| {
            c.filter(|c| c.is_valid(r))
                .map(|c| c.value(r))
                .filter(|v| v.is_finite())
        };
        let rows = (0..batch.num_rows())
            .filter(|&r| keys.is_valid(r))
            .map(|r| {
                (
                    keys.value(r),
                    Point {
                        t_ms: now_ms,
                        value: at(values, r),
                        statistic: at(stats, r),
                        score: if scores.is_valid(r) {
                            scores.value(r) as f32
                        } else {
                            0.0
                        },
                        anomaly: flags.is_valid(r) && flags.value(r),
                    },
                )
            });
        history.record(
            component,
            self.statistic.as_ref().map(|(_, n)| n.as_str()),
            rows,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: i64, score: f32, anomaly: bool) -> Point {
        Point {
            t_ms: t,
            value: Some(t as f64),
            statistic: None,
            score,
            anomaly,
        }
    }

    #[test]
    fn series_keep_their_last_points_and_count_all() {
        let h = SensorHistory::new(10, 3);
        let c: Arc<str> = "z".into();
        h.record(&c, Some("z"), (0..5).map(|t| ("a", p(t, 0.1, t == 4))));
        let s = h.points("a", None, None).unwrap();
        assert_eq!(s.total, 5);
        assert_eq!(
            s.points.iter().map(|p| p.t_ms).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(s.statistic.as_deref(), Some("z"));
        let after = h.points("a", Some("z"), Some(4)).unwrap();
        assert_eq!(after.points.len(), 1);
        assert_eq!(after.points[0].t_ms, 4);
        assert!(h.points("a", Some("other"), None).is_none());
    }

    #[test]
    fn when_full_only_anomalies_get_a_slot_replacing_the_quietest() {
        let h = SensorHistory::new(2, 4);
        let c: Arc<str> = "z".into();
        h.record(
            &c,
            None,
            [("a", p(1, 0.9, true)), ("b", p(1, 0.1, false))].into_iter(),
        );
        h.record(&c, None, [("c", p(2, 0.1, false))].into_iter());
        assert!(h.points("c", None, None).is_none());
        h.record(&c, None, [("d", p(3, 0.8, true))].into_iter());
        assert!(
            h.points("b", None, None).is_none(),
            "b never had an anomaly"
        );
        assert!(h.points("a", None, None).is_some());
        assert!(h.points("d", None, None).is_some());
        let stats = h.stats();
        assert_eq!(
            (stats.tracked, stats.untracked_rows, stats.evicted),
            (2, 1, 1)
        );
        assert_eq!(h.search("", 10).0, 2);
        assert_eq!(h.search("D", 10).1[0].sensor, "d");
        let (matched, first) = h.search("", 1);
        assert_eq!(
            (matched, first.len(), first[0].sensor.as_str()),
            (2, 1, "a")
        );
        let top = h.top(0, 10);
        assert_eq!(top.len(), 2);
        assert!(top[0].peak_score >= top[1].peak_score);
        assert!(h.stats().bytes_bound >= 2 * 4 * POINT_BYTES);
    }
}
