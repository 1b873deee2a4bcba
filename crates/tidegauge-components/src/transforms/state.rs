//! Checkpoint bytes of keyed state: the keys in id order and one state per key, so a
//! keyed transform restores both its [`KeyInterner`] and its per-key states in one call.
//!
//! Format: CBOR of `{"version":1,"keys":[...],"states":[...]}` — states serialize with
//! their own serde derives (`tidegauge-detect`'s `serde` feature). CBOR keeps every float
//! bit for bit (JSON text would need exact float parsing, which serde_json only does with
//! a feature that slows every JSON decode), so a restored detector continues exactly.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tidegauge_core::ComponentError;

use super::KeyInterner;

const VERSION: u32 = 1;

#[derive(Serialize)]
struct Out<'a, S> {
    version: u32,
    keys: Vec<&'a str>,
    states: &'a [S],
}

#[derive(serde::Deserialize)]
struct In<S> {
    version: u32,
    keys: Vec<String>,
    states: Vec<S>,
}

/// Encodes `states[id]` of every key `keys` has interned.
pub fn encode_keyed<S: Serialize>(
    keys: &KeyInterner,
    states: &[S],
) -> Result<Vec<u8>, ComponentError> {
    let mut ordered: Vec<(&str, u32)> = keys.iter().collect();
    ordered.sort_unstable_by_key(|&(_, id)| id);
    if ordered.len() != states.len() {
        return Err(ComponentError::new(format!(
            "{} keys but {} states",
            ordered.len(),
            states.len()
        )));
    }
    let mut bytes = Vec::new();
    ciborium::into_writer(
        &Out {
            version: VERSION,
            keys: ordered.into_iter().map(|(k, _)| k).collect(),
            states,
        },
        &mut bytes,
    )
    .map_err(|e| ComponentError::new(format!("cannot encode state: {e}")))?;
    Ok(bytes)
}

/// Decodes what [`encode_keyed`] wrote: the interner (same ids) and the states.
/// [`decode_keyed`] for a detector whose states remember the parameters they were learnt
/// under (`params_of`): a checkpoint taken with other parameters cannot continue, and is
/// refused (the detector then starts cold).
pub fn decode_keyed_learnt<S: DeserializeOwned, P: PartialEq + std::fmt::Debug>(
    bytes: &[u8],
    detector: &str,
    params: &P,
    params_of: impl Fn(&S) -> &P,
) -> Result<(KeyInterner, Vec<S>), ComponentError> {
    let (keys, states): (KeyInterner, Vec<S>) = decode_keyed(bytes)?;
    if let Some(s) = states.iter().find(|s| params_of(s) != params) {
        return Err(ComponentError::new(format!(
            "{detector} state was checkpointed with other parameters ({:?})",
            params_of(s)
        )));
    }
    Ok((keys, states))
}

pub fn decode_keyed<S: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(KeyInterner, Vec<S>), ComponentError> {
    let state: In<S> = ciborium::from_reader(bytes)
        .map_err(|e| ComponentError::new(format!("not a keyed state: {e}")))?;
    if state.version != VERSION {
        return Err(ComponentError::new(format!(
            "keyed state version {} (this build reads {VERSION})",
            state.version
        )));
    }
    if state.keys.len() != state.states.len() {
        return Err(ComponentError::new(format!(
            "{} keys but {} states",
            state.keys.len(),
            state.states.len()
        )));
    }
    let mut keys = KeyInterner::default();
    for k in &state.keys {
        if !keys.id(k).1 {
            return Err(ComponentError::new(format!("key `{k}` appears twice")));
        }
    }
    Ok((keys, state.states))
}

/// Settings that do not change what a detector has learnt: where its state lives and how
/// much of it is kept. A checkpoint stays valid when only these change.
const PLACEMENT_SETTINGS: [&str; 3] = ["workers", "max_keys", "key_idle_ms"];

/// A detector's settings as compared at restore: its config as JSON text, without
/// [`PLACEMENT_SETTINGS`].
fn settings_text<C: Serialize>(config: &C) -> Result<String, ComponentError> {
    let mut value = serde_json::to_value(config)
        .map_err(|e| ComponentError::new(format!("cannot encode settings: {e}")))?;
    if let Some(map) = value.as_object_mut() {
        for k in PLACEMENT_SETTINGS {
            map.remove(k);
        }
    }
    Ok(value.to_string())
}

/// Checkpoint bytes of a detector whose parameters are all in its config: the settings
/// (compared by [`load_with_settings`]) and what [`encode_keyed`] writes.
pub fn save_with_settings<C: Serialize, S: Serialize>(
    config: &C,
    keys: &KeyInterner,
    states: &[S],
) -> Result<Vec<u8>, ComponentError> {
    let keyed = encode_keyed(keys, states)?;
    let mut bytes = Vec::new();
    ciborium::into_writer(
        &(
            VERSION,
            settings_text(config)?,
            serde_bytes_like::Bytes(&keyed),
        ),
        &mut bytes,
    )
    .map_err(|e| ComponentError::new(format!("cannot encode state: {e}")))?;
    Ok(bytes)
}

/// Reads what [`save_with_settings`] wrote, each state rebuilt by `spec`'s
/// `restore_state`. States saved under other settings were learnt under other parameters:
/// they are dropped with a warning and every sensor starts cold. Damaged bytes are an error.
pub fn load_with_settings<C: super::spec::DetectorSpec>(
    spec: &C,
    bytes: &[u8],
) -> Result<(KeyInterner, Vec<C::State>), ComponentError> {
    let (version, settings, keyed): (u32, String, serde_bytes_like::ByteBuf) =
        ciborium::from_reader(bytes)
            .map_err(|e| ComponentError::new(format!("not a {} state: {e}", C::NAME)))?;
    if version != VERSION {
        return Err(ComponentError::new(format!(
            "{} state version {version} (this build reads {VERSION})",
            C::NAME
        )));
    }
    let (keys, values): (KeyInterner, Vec<ciborium::Value>) = decode_keyed(&keyed.0)?;
    let now = settings_text(spec)?;
    if settings != now {
        tracing::warn!(
            "{} state was checkpointed with other settings ({settings}); every sensor starts \
             cold with the settings now in force ({now})",
            C::NAME
        );
        return Ok((KeyInterner::default(), Vec::new()));
    }
    let mut names: Vec<(&str, u32)> = keys.iter().collect();
    names.sort_unstable_by_key(|&(_, id)| id);
    let mut states = Vec::with_capacity(values.len());
    for ((key, _), value) in names.into_iter().zip(values) {
        states.push(
            spec.restore_state(value)
                .map_err(|e| ComponentError::new(format!("{} state of `{key}`: {e}", C::NAME)))?,
        );
    }
    Ok((keys, states))
}

/// A state from its checkpointed form, for detectors whose state deserializes on its own.
pub fn deserialize_state<S: DeserializeOwned>(state: ciborium::Value) -> Result<S, String> {
    state.deserialized().map_err(|e| e.to_string())
}

/// Several shards' blobs in one (CBOR list of byte strings).
pub fn encode_shards(shards: &[Vec<u8>]) -> Result<Vec<u8>, ComponentError> {
    let wrapped: Vec<serde_bytes_like::Bytes<'_>> =
        shards.iter().map(|s| serde_bytes_like::Bytes(s)).collect();
    let mut bytes = Vec::new();
    ciborium::into_writer(&(VERSION, wrapped), &mut bytes)
        .map_err(|e| ComponentError::new(format!("cannot encode state: {e}")))?;
    Ok(bytes)
}

/// The shards' blobs [`encode_shards`] wrote.
pub fn decode_shards(bytes: &[u8]) -> Result<Vec<Vec<u8>>, ComponentError> {
    let (version, shards): (u32, Vec<serde_bytes_like::ByteBuf>) = ciborium::from_reader(bytes)
        .map_err(|e| ComponentError::new(format!("not a sharded state: {e}")))?;
    if version != VERSION {
        return Err(ComponentError::new(format!(
            "sharded state version {version} (this build reads {VERSION})"
        )));
    }
    Ok(shards.into_iter().map(|b| b.0).collect())
}

/// The keys (in id order) paired with their states.
pub fn into_pairs<S>(keys: KeyInterner, states: Vec<S>) -> Vec<(Box<str>, S)> {
    keys.into_keys().into_iter().zip(states).collect()
}

/// An interner and states from key/state pairs (ids in pair order).
pub fn from_pairs<S>(pairs: Vec<(Box<str>, S)>) -> (KeyInterner, Vec<S>) {
    let mut keys = KeyInterner::default();
    let mut states = Vec::with_capacity(pairs.len());
    for (k, s) in pairs {
        if keys.id(&k).1 {
            states.push(s);
        }
    }
    (keys, states)
}

/// Byte strings as CBOR byte strings (not arrays of numbers).
mod serde_bytes_like {
    pub struct Bytes<'a>(pub &'a [u8]);

    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> serde::Deserialize<'de> for ByteBuf {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

/// Two sensors, `a` (values 0..7 repeating) and `b` (the same, 100 higher), each fed
/// `events` readings by a fresh state from `new`: what a detector's checkpoint test saves.
#[cfg(test)]
pub(crate) fn two_trained_sensors<S: tidegauge_detect::Detector>(
    new: impl Fn() -> S,
    events: i64,
) -> (KeyInterner, Vec<S>) {
    let mut keys = KeyInterner::default();
    let mut states = Vec::new();
    for k in ["a", "b"] {
        keys.id(k);
        let mut s = new();
        for i in 0..events {
            s.observe(i, (i % 7) as f64 + if k == "b" { 100.0 } else { 0.0 });
        }
        states.push(s);
    }
    (keys, states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidegauge_detect::RollingStats;

    #[test]
    fn keyed_rolling_stats_round_trip_bit_for_bit() {
        let mut keys = KeyInterner::default();
        let mut states = Vec::new();
        for (i, k) in ["b", "a", "c", "a", "b"].iter().enumerate() {
            let (id, new) = keys.id(k);
            if new {
                states.push(RollingStats::new(3));
            }
            states[id].push(i as f64 * 0.1 + 1e-9);
        }
        let bytes = encode_keyed(&keys, &states).unwrap();
        let (mut keys2, mut states2): (KeyInterner, Vec<RollingStats>) =
            decode_keyed(&bytes).unwrap();
        assert_eq!(keys2.len(), 3);
        for k in ["a", "b", "c"] {
            let (a, _) = keys.id(k);
            let (b, new) = keys2.id(k);
            assert!(!new);
            assert_eq!(a, b);
            states[a].push(7.25);
            states2[b].push(7.25);
            assert_eq!(states[a].mean().to_bits(), states2[b].mean().to_bits());
            assert_eq!(states[a].std().to_bits(), states2[b].std().to_bits());
        }
    }

    #[test]
    fn damaged_state_is_an_error() {
        let keys = KeyInterner::default();
        let bytes = encode_keyed::<RollingStats>(&keys, &[]).unwrap();
        assert!(decode_keyed::<RollingStats>(&bytes).unwrap().1.is_empty());
        assert!(decode_keyed::<RollingStats>(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_keyed::<RollingStats>(b"garbage").is_err());
    }
}
