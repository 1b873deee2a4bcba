//! What a reload changes, decided without running anything: [`plan`] compares the running
//! graph with the new pipeline and says, for each component, whether it keeps running,
//! has parameters changed in place, is built anew, is added or is removed. The runner then
//! carries the plan out (builds, rewires, retires, starts).

use std::collections::HashMap;

use arrow_schema::SchemaRef;
use serde_json::Value;

use super::ReloadSummary;
use crate::kind::ComponentKind;

/// A component as the pipeline file describes it, as far as a reload compares it.
#[derive(Clone, Copy, Debug)]
pub struct Shape<'a> {
    /// Id as written in the file.
    pub id: &'a str,
    /// Kind.
    pub kind: ComponentKind,
    /// Registered type.
    pub type_name: &'a str,
    /// Ids it reads from.
    pub inputs: &'a [String],
    /// Schema of its input (transforms and sinks).
    pub input_schema: Option<&'a SchemaRef>,
    /// Schema of its output (sources and transforms).
    pub output_schema: Option<&'a SchemaRef>,
    /// Its settings as written.
    pub settings: &'a Value,
}

/// A running component instance, as a reload sees it.
#[derive(Clone, Debug)]
pub struct RunningShape<'a> {
    /// What it was loaded from.
    pub shape: Shape<'a>,
    /// Whether its task still runs.
    pub alive: bool,
    /// Upstream ids whose edge into it has closed (every output feeding it is gone).
    pub closed_inputs: Vec<&'a str>,
    /// The parameters it can change while running; `None` when it cannot change any
    /// (no control channel, or it stopped answering).
    pub tunables: Option<Vec<String>>,
}

/// What happens to one component of the new pipeline.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The running instance at this index goes on, untouched.
    Keep(usize),
    /// The running instance at this index goes on with these settings changed in place.
    Retune(usize, Vec<(String, Value)>),
    /// Built anew, replacing the running instance at this index.
    Rebuild(usize),
    /// Built anew; nothing runs under its id.
    Add,
}

impl Action {
    /// The running instance this one continues or replaces.
    pub fn old(&self) -> Option<usize> {
        match self {
            Action::Keep(o) | Action::Retune(o, _) | Action::Rebuild(o) => Some(*o),
            Action::Add => None,
        }
    }

    /// Whether a new instance is built.
    pub fn builds(&self) -> bool {
        matches!(self, Action::Rebuild(_) | Action::Add)
    }
}

/// What a reload does: one action per component of the new pipeline (in its order), and
/// the running instances that go.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One per component of the new pipeline, in the same order.
    pub actions: Vec<Action>,
    /// Indexes of the running instances whose ids the new pipeline no longer has.
    pub removed: Vec<usize>,
}

impl Plan {
    /// Whether instances start or stop (so checkpoints must pause around the change).
    pub fn changes_graph(&self) -> bool {
        !self.removed.is_empty() || self.actions.iter().any(Action::builds)
    }

    /// The ids of each kind of change (no parameter changes: those are known once made).
    pub fn summary(&self, running: &[RunningShape], new: &[Shape]) -> ReloadSummary {
        let mut s = ReloadSummary::default();
        for (n, action) in new.iter().zip(&self.actions) {
            let id = n.id.to_string();
            match action {
                Action::Keep(_) => s.kept.push(id),
                Action::Retune(..) => s.retuned.push(id),
                Action::Rebuild(_) => s.rebuilt.push(id),
                Action::Add => s.added.push(id),
            }
        }
        s.removed = self
            .removed
            .iter()
            .map(|&i| running[i].shape.id.to_string())
            .collect();
        s
    }
}

/// Decides what a reload from `running` to `new` does. `new` is in topological order, so
/// an upstream's action is known before its consumers'.
///
/// A component keeps running when its kind, type, inputs and schemas are unchanged, its
/// task is alive and each of its input edges is open or fed by an upstream that is not
/// rebuilt; it is retuned when, besides, the only settings that changed are tunable ones
/// (a setting removed falls back to its default: that is rebuilt rather than guessed).
pub fn plan(running: &[RunningShape], new: &[Shape]) -> Plan {
    let index: HashMap<&str, usize> = running
        .iter()
        .enumerate()
        .map(|(i, r)| (r.shape.id, i))
        .collect();
    let mut actions: Vec<Action> = Vec::with_capacity(new.len());
    let mut rebuilt: HashMap<&str, bool> = HashMap::new();
    for n in new {
        let action = match index.get(n.id) {
            None => Action::Add,
            Some(&o) => {
                let old = &running[o];
                // A closed edge is reopened only by a new upstream instance, which needs
                // a new consumer too.
                let fed = old
                    .closed_inputs
                    .iter()
                    .all(|from| !rebuilt.get(from).copied().unwrap_or(false));
                if !same_wiring(&old.shape, n) || !old.alive || !fed {
                    Action::Rebuild(o)
                } else if old.shape.settings == n.settings {
                    Action::Keep(o)
                } else {
                    match tunable_diff(old, n.settings) {
                        Some(diff) => Action::Retune(o, diff),
                        None => Action::Rebuild(o),
                    }
                }
            }
        };
        rebuilt.insert(n.id, action.builds());
        actions.push(action);
    }
    let removed = running
        .iter()
        .enumerate()
        .filter(|(_, r)| !new.iter().any(|n| n.id == r.shape.id))
        .map(|(i, _)| i)
        .collect();
    Plan { actions, removed }
}

/// Same kind, type, set of inputs and schemas.
fn same_wiring(old: &Shape, new: &Shape) -> bool {
    let mut a: Vec<&String> = old.inputs.iter().collect();
    let mut b: Vec<&String> = new.inputs.iter().collect();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    old.kind == new.kind
        && old.type_name == new.type_name
        && a == b
        && same_fields(old.input_schema, new.input_schema)
        && same_fields(old.output_schema, new.output_schema)
}

fn same_fields(a: Option<&SchemaRef>, b: Option<&SchemaRef>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.fields() == b.fields(),
        (None, None) => true,
        _ => false,
    }
}

/// The settings that differ between `old` (as loaded) and `new`, when every one of them
/// is a tunable parameter of the running instance.
fn tunable_diff(old: &RunningShape, new: &Value) -> Option<Vec<(String, Value)>> {
    let tunables = old.tunables.as_ref()?;
    let (Value::Object(before), Value::Object(after)) = (old.shape.settings, new) else {
        return None;
    };
    if before.keys().any(|k| !after.contains_key(k)) {
        return None;
    }
    let diff: Vec<(String, Value)> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    diff.iter()
        .all(|(k, _)| tunables.contains(k))
        .then_some(diff)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_schema::{DataType, Field, Schema};
    use serde_json::json;

    use super::*;
    use ComponentKind::{Sink, Source, Transform};

    /// One component of a test pipeline, owning what a [`Shape`] borrows.
    struct C {
        id: &'static str,
        kind: ComponentKind,
        type_name: &'static str,
        inputs: Vec<String>,
        input: Option<SchemaRef>,
        output: Option<SchemaRef>,
        settings: Value,
    }

    fn schema(fields: &[&str]) -> SchemaRef {
        Arc::new(Schema::new(
            fields
                .iter()
                .map(|f| Field::new(*f, DataType::Float64, false))
                .collect::<Vec<_>>(),
        ))
    }

    fn source(id: &'static str) -> C {
        C {
            id,
            kind: Source,
            type_name: "simulate",
            inputs: vec![],
            input: None,
            output: Some(schema(&["value"])),
            settings: json!({"sensors": 4}),
        }
    }

    fn zscore(id: &'static str, from: &str) -> C {
        C {
            id,
            kind: Transform,
            type_name: "zscore",
            inputs: vec![from.to_string()],
            input: Some(schema(&["value"])),
            output: Some(schema(&["value", "anomaly_score"])),
            settings: json!({"window": 100, "threshold": 3.0}),
        }
    }

    fn sink(id: &'static str, from: &str) -> C {
        C {
            id,
            kind: Sink,
            type_name: "stdout",
            inputs: vec![from.to_string()],
            input: Some(schema(&["value", "anomaly_score"])),
            output: None,
            settings: json!({}),
        }
    }

    impl C {
        fn shape(&self) -> Shape<'_> {
            Shape {
                id: self.id,
                kind: self.kind,
                type_name: self.type_name,
                inputs: &self.inputs,
                input_schema: self.input.as_ref(),
                output_schema: self.output.as_ref(),
                settings: &self.settings,
            }
        }

        /// Running, alive, every edge open; a transform can change `threshold` live.
        fn running(&self) -> RunningShape<'_> {
            RunningShape {
                shape: self.shape(),
                alive: true,
                closed_inputs: vec![],
                tunables: (self.kind == Transform).then(|| vec!["threshold".to_string()]),
            }
        }

        fn with(mut self, name: &str, value: Value) -> C {
            self.settings[name] = value;
            self
        }
    }

    fn pipeline() -> Vec<C> {
        vec![source("in"), zscore("z", "in"), sink("out", "z")]
    }

    fn plan_of(running: &[RunningShape], new: &[C]) -> (Plan, ReloadSummary) {
        let new: Vec<Shape> = new.iter().map(C::shape).collect();
        let p = plan(running, &new);
        let s = p.summary(running, &new);
        (p, s)
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_same_pipeline_keeps_everything() {
        let old = pipeline();
        let running: Vec<_> = old.iter().map(C::running).collect();
        let (p, s) = plan_of(&running, &pipeline());
        assert_eq!(
            p.actions,
            [Action::Keep(0), Action::Keep(1), Action::Keep(2)]
        );
        assert!(!p.changes_graph());
        assert!(s.is_noop());
        assert_eq!(s.kept, ids(&["in", "z", "out"]));
    }

    #[test]
    fn a_tunable_setting_changed_is_retuned_in_place() {
        let old = pipeline();
        let running: Vec<_> = old.iter().map(C::running).collect();
        let mut new = pipeline();
        new[1] = zscore("z", "in").with("threshold", json!(4.5));
        let (p, s) = plan_of(&running, &new);
        assert_eq!(
            p.actions[1],
            Action::Retune(1, vec![("threshold".to_string(), json!(4.5))])
        );
        assert!(!p.changes_graph());
        assert_eq!(s.retuned, ids(&["z"]));
        assert_eq!(s.kept, ids(&["in", "out"]));
    }

    #[test]
    fn a_setting_that_is_not_tunable_rebuilds() {
        let old = pipeline();
        let running: Vec<_> = old.iter().map(C::running).collect();
        let mut new = pipeline();
        new[1] = zscore("z", "in").with("window", json!(50));
        let (p, s) = plan_of(&running, &new);
        assert_eq!(p.actions[1], Action::Rebuild(1));
        assert!(p.changes_graph());
        assert_eq!(s.rebuilt, ids(&["z"]));
    }

    #[test]
    fn a_tunable_change_on_a_component_without_control_rebuilds() {
        let old = pipeline();
        let mut running: Vec<_> = old.iter().map(C::running).collect();
        running[1].tunables = None;
        let mut new = pipeline();
        new[1] = zscore("z", "in").with("threshold", json!(4.5));
        assert_eq!(plan_of(&running, &new).0.actions[1], Action::Rebuild(1));
    }

    #[test]
    fn a_setting_removed_rebuilds_rather_than_guessing_its_default() {
        let old = pipeline();
        let running: Vec<_> = old.iter().map(C::running).collect();
        let mut new = pipeline();
        new[1].settings = json!({"window": 100});
        assert_eq!(plan_of(&running, &new).0.actions[1], Action::Rebuild(1));
    }

    #[test]
    fn a_changed_type_rebuilds() {
        let old = pipeline();
        let running: Vec<_> = old.iter().map(C::running).collect();
        let mut new = pipeline();
        new[2].type_name = "file";
        assert_eq!(plan_of(&running, &new).0.actions[2], Action::Rebuild(2));
    }

    #[test]
    fn changed_inputs_rebuild_but_their_order_does_not() {
        let old = vec![source("a"), source("b"), sink("out", "a")];
        let mut running_old = old;
        running_old[2].inputs = ids(&["a", "b"]);
        let running: Vec<_> = running_old.iter().map(C::running).collect();

        let mut same = vec![source("a"), source("b"), sink("out", "b")];
        same[2].inputs = ids(&["b", "a"]);
        assert_eq!(plan_of(&running, &same).0.actions[2], Action::Keep(2));

        let other = vec![source("a"), source("b"), sink("out", "b")];
        assert_eq!(plan_of(&running, &other).0.actions[2], Action::Rebuild(2));
    }

    #[test]
    fn a_changed_schema_rebuilds() {
        let old = pipeline();
        let running: Vec<_> = old.iter().map(C::running).collect();
        let mut new = pipeline();
        new[1].output = Some(schema(&["value", "anomaly_score", "is_anomaly"]));
        new[2].input = new[1].output.clone();
        let (p, _) = plan_of(&running, &new);
        assert_eq!(
            p.actions,
            [Action::Keep(0), Action::Rebuild(1), Action::Rebuild(2)]
        );
    }

    #[test]
    fn an_instance_that_ended_is_rebuilt() {
        let old = pipeline();
        let mut running: Vec<_> = old.iter().map(C::running).collect();
        running[0].alive = false;
        assert_eq!(
            plan_of(&running, &pipeline()).0.actions[0],
            Action::Rebuild(0)
        );
    }

    #[test]
    fn a_closed_edge_from_a_rebuilt_upstream_rebuilds_its_consumer() {
        let old = pipeline();
        let mut running: Vec<_> = old.iter().map(C::running).collect();
        running[0].alive = false;
        running[1].closed_inputs = vec!["in"];
        let (p, _) = plan_of(&running, &pipeline());
        assert_eq!(
            p.actions,
            [Action::Rebuild(0), Action::Rebuild(1), Action::Keep(2)]
        );

        // The same closed edge from an upstream that keeps running changes nothing: it
        // closed because that upstream finished its input.
        running[0].alive = true;
        let (p, _) = plan_of(&running, &pipeline());
        assert_eq!(
            p.actions,
            [Action::Keep(0), Action::Keep(1), Action::Keep(2)]
        );
    }

    #[test]
    fn a_new_component_is_added() {
        let old = pipeline();
        let running: Vec<_> = old.iter().map(C::running).collect();
        let mut new = pipeline();
        new.push(sink("copy", "z"));
        let (p, s) = plan_of(&running, &new);
        assert_eq!(p.actions[3], Action::Add);
        assert!(p.changes_graph());
        assert_eq!(s.added, ids(&["copy"]));
    }

    #[test]
    fn a_component_left_out_is_removed() {
        let old = [
            source("in"),
            zscore("z", "in"),
            sink("out", "z"),
            sink("copy", "z"),
        ];
        let running: Vec<_> = old.iter().map(C::running).collect();
        let (p, s) = plan_of(&running, &pipeline());
        assert_eq!(p.removed, [3]);
        assert!(p.changes_graph());
        assert_eq!(s.removed, ids(&["copy"]));
        assert_eq!(s.kept, ids(&["in", "z", "out"]));
    }

    #[test]
    fn a_renamed_component_is_one_removed_and_one_added() {
        let old = pipeline();
        let running: Vec<_> = old.iter().map(C::running).collect();
        let new = vec![source("in"), zscore("z", "in"), sink("screen", "z")];
        let (p, s) = plan_of(&running, &new);
        assert_eq!(p.actions[2], Action::Add);
        assert_eq!(p.removed, [2]);
        assert_eq!((s.added, s.removed), (ids(&["screen"]), ids(&["out"])));
    }
}
