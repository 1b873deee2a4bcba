//! The handle on a running pipeline: what runs, its counters, and live parameter changes.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use serde_json::{Map, Value};

use crate::control::{ControlError, TransformControl};
use crate::error::ConfigError;
use crate::kind::ComponentKind;
use crate::registry::{self, AnyConfig};
use crate::telemetry::{ComponentTelemetry, TelemetrySnapshot};

/// One parameter changed while running.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParamChange {
    /// Component id.
    pub component: String,
    /// Parameter name.
    pub parameter: String,
    /// Value before.
    pub old: Value,
    /// Value after.
    pub new: Value,
}

/// Why a parameter change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// No component has this id.
    #[error("no component `{0}`")]
    UnknownComponent(String),
    /// The parameter cannot be changed while running.
    #[error("{0}")]
    NotTunable(String),
    /// The new value does not pass validation.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ConfigError>),
    /// The component is not running (any more).
    #[error("component `{0}` is not running")]
    Stopped(String),
    /// The component refused the value.
    #[error("{0}")]
    Rejected(String),
}

/// A component of the running pipeline, as others see it.
#[derive(Clone)]
pub struct ComponentView {
    /// Id as written in the file.
    pub id: String,
    /// Kind.
    pub kind: ComponentKind,
    /// Registered type.
    pub type_name: &'static str,
    /// Ids it reads from.
    pub inputs: Vec<String>,
    /// Schema of its input (transforms and sinks).
    pub input_schema: Option<SchemaRef>,
    /// Schema of its output (sources and transforms).
    pub output_schema: Option<SchemaRef>,
    /// Settings now in force: as written, with parameters changed since applied.
    pub settings: Value,
    /// Its counters.
    pub telemetry: Arc<ComponentTelemetry>,
    /// Requests to it (transforms).
    pub control: Option<TransformControl>,
}

struct LiveState {
    components: RwLock<Vec<ComponentView>>,
    started: Instant,
    profiling: bool,
    /// Serializes changes (parameter changes and reloads).
    changing: tokio::sync::Mutex<()>,
    /// Checkpointing's counters (with a `[checkpoint]` table).
    checkpoint: std::sync::OnceLock<Arc<crate::checkpoint::CheckpointTelemetry>>,
}

/// A shared view of a running pipeline: what runs, its counters, and the way to change
/// its parameters. Clone freely.
#[derive(Clone)]
pub struct LiveHandle(Arc<LiveState>);

impl LiveHandle {
    pub(super) fn new(profiling: bool) -> LiveHandle {
        LiveHandle(Arc::new(LiveState {
            components: RwLock::new(Vec::new()),
            started: Instant::now(),
            profiling,
            changing: tokio::sync::Mutex::new(()),
            checkpoint: std::sync::OnceLock::new(),
        }))
    }

    pub(super) fn set_checkpoint_telemetry(&self, t: Arc<crate::checkpoint::CheckpointTelemetry>) {
        let _ = self.0.checkpoint.set(t);
    }

    /// Checkpointing's counters now, when the pipeline has a `[checkpoint]` table.
    pub fn checkpoint_metrics(&self) -> Option<crate::metrics::CheckpointMetrics> {
        self.0.checkpoint.get().map(|t| t.metrics())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<ComponentView>> {
        // The list is replaced whole: a panicking writer cannot leave it torn.
        self.0.components.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<ComponentView>> {
        self.0.components.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every component, in topological order.
    pub fn components(&self) -> Vec<ComponentView> {
        self.read().clone()
    }

    /// The component called `id`.
    pub fn component(&self, id: &str) -> Option<ComponentView> {
        self.read().iter().find(|c| c.id == id).cloned()
    }

    /// Current counters of every component.
    pub fn snapshot(&self) -> Vec<TelemetrySnapshot> {
        self.read().iter().map(|c| c.telemetry.snapshot()).collect()
    }

    /// Time since the run started.
    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }

    /// Whether the run measures waits per stage.
    pub fn profiling(&self) -> bool {
        self.0.profiling
    }

    /// Changes parameters of a running transform: each must be tunable; the settings
    /// with the new values must pass the component's validation against its input, and
    /// must not change its output schema. Returns what changed.
    pub async fn set_params(
        &self,
        id: &str,
        patch: &Map<String, Value>,
    ) -> Result<Vec<ParamChange>, ParamError> {
        let _serial = self.0.changing.lock().await;
        let view = self
            .component(id)
            .ok_or_else(|| ParamError::UnknownComponent(id.to_string()))?;
        let Some(control) = view.control.clone() else {
            return Err(ParamError::NotTunable(format!(
                "{} `{id}` has no parameters that can be changed while running",
                view.kind
            )));
        };
        let stopped = |_| ParamError::Stopped(id.to_string());
        let tunables = control.tunables().await.map_err(stopped)?;
        let names: Vec<&str> = tunables.iter().map(|t| t.name.as_str()).collect();
        for name in patch.keys() {
            if !names.contains(&name.as_str()) {
                return Err(ParamError::NotTunable(format!(
                    "`{name}` of `{id}` cannot be changed while running (can be: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        }
        let mut settings = match &view.settings {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        for (k, v) in patch {
            settings.insert(k.clone(), v.clone());
        }
        check_settings(&view, Value::Object(settings.clone()))?;

        let mut changes = Vec::new();
        for (name, value) in patch {
            let old = tunables
                .iter()
                .find(|t| &t.name == name)
                .map(|t| t.value.clone())
                .unwrap_or(Value::Null);
            if let Err(e) = control.set(name, value.clone()).await {
                // All or nothing: what this request already changed goes back, so the
                // history (written only for a success) matches what runs.
                for c in changes.iter().rev() {
                    let c: &ParamChange = c;
                    if control.set(&c.parameter, c.old.clone()).await.is_ok() {
                        self.update_setting(id, &c.parameter, &c.old);
                    }
                }
                return Err(match e {
                    ControlError::Stopped => ParamError::Stopped(id.to_string()),
                    ControlError::Rejected(m) => ParamError::Rejected(m),
                });
            }
            self.update_setting(id, name, value);
            changes.push(ParamChange {
                component: id.to_string(),
                parameter: name.clone(),
                old,
                new: value.clone(),
            });
        }
        Ok(changes)
    }

    pub(super) fn update_setting(&self, id: &str, name: &str, value: &Value) {
        let mut list = self.write();
        if let Some(c) = list.iter_mut().find(|c| c.id == id) {
            if !c.settings.is_object() {
                c.settings = Value::Object(Map::new());
            }
            if let Value::Object(m) = &mut c.settings {
                m.insert(name.to_string(), value.clone());
            }
        }
    }
}

/// Parses `settings` as the component's config and validates it against the component's
/// input; the output schema must stay as it is.
fn check_settings(view: &ComponentView, settings: Value) -> Result<(), ParamError> {
    let descriptor = registry::find(view.kind, view.type_name)
        .ok_or_else(|| ParamError::UnknownComponent(view.id.clone()))?;
    let config = descriptor
        .parse_json(settings)
        .map_err(|e| ParamError::Invalid(vec![ConfigError::new(e.path, e.message)]))?;
    let AnyConfig::Transform(config) = config else {
        return Err(ParamError::NotTunable(format!(
            "`{}` is not a transform",
            view.id
        )));
    };
    let (Some(input), Some(output)) = (&view.input_schema, &view.output_schema) else {
        return Err(ParamError::Stopped(view.id.clone()));
    };
    let new_output = config.validate(input).map_err(ParamError::Invalid)?;
    if new_output.fields() != output.fields() {
        return Err(ParamError::Invalid(vec![ConfigError::new(
            "",
            format!(
                "the change would alter the events `{}` emits ({} instead of {}); change it in the pipeline file and reload",
                view.id,
                crate::schema::describe(&new_output),
                crate::schema::describe(output)
            ),
        )]));
    }
    Ok(())
}
