//! The toxic model: types, attributes, defaults, and the exact JSON shape of
//! toxiproxy v2 (key order, integer attributes, `1` not `1.0`).

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{NAME_BYTES_MAX, TOXIC_DURATION_MS_MAX};
use crate::error::ApiError;

/// A direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Client → upstream: the request side.
    Upstream = 0,
    /// Upstream → client: the response side.
    Downstream = 1,
}

impl Direction {
    /// The canonical lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        }
    }

    /// toxiproxy parses the stream case-insensitively (and echoes it as sent).
    fn parse(s: &str) -> Option<Direction> {
        if s.eq_ignore_ascii_case("upstream") {
            Some(Direction::Upstream)
        } else if s.eq_ignore_ascii_case("downstream") {
            Some(Direction::Downstream)
        } else {
            None
        }
    }
}

/// The toxic types of toxiproxy v2 (`noop` included: it is creatable there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToxicType {
    Latency,
    Bandwidth,
    SlowClose,
    Timeout,
    ResetPeer,
    Slicer,
    LimitData,
    Noop,
}

impl ToxicType {
    fn parse(s: &str) -> Option<ToxicType> {
        Some(match s {
            "latency" => ToxicType::Latency,
            "bandwidth" => ToxicType::Bandwidth,
            "slow_close" => ToxicType::SlowClose,
            "timeout" => ToxicType::Timeout,
            "reset_peer" => ToxicType::ResetPeer,
            "slicer" => ToxicType::Slicer,
            "limit_data" => ToxicType::LimitData,
            "noop" => ToxicType::Noop,
            _ => return None,
        })
    }

    /// The API name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ToxicType::Latency => "latency",
            ToxicType::Bandwidth => "bandwidth",
            ToxicType::SlowClose => "slow_close",
            ToxicType::Timeout => "timeout",
            ToxicType::ResetPeer => "reset_peer",
            ToxicType::Slicer => "slicer",
            ToxicType::LimitData => "limit_data",
            ToxicType::Noop => "noop",
        }
    }

    /// Attribute names in toxiproxy's output order (Go struct field order).
    pub fn attribute_names(self) -> &'static [&'static str] {
        match self {
            ToxicType::Latency => &["latency", "jitter"],
            ToxicType::Bandwidth => &["rate"],
            ToxicType::SlowClose => &["delay"],
            ToxicType::Timeout | ToxicType::ResetPeer => &["timeout"],
            ToxicType::Slicer => &["average_size", "size_variation", "delay"],
            ToxicType::LimitData => &["bytes"],
            ToxicType::Noop => &[],
        }
    }
}

/// How often a toxic's toxicity is rolled (an extension field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Once per connection and direction, as toxiproxy does (the default).
    Connection,
    /// Once per request/response exchange: a new exchange starts whenever the
    /// client sends after the upstream has sent (HTTP/1.1 keep-alive).
    Request,
}

impl Scope {
    fn parse(s: &str) -> Option<Scope> {
        match s {
            "connection" => Some(Scope::Connection),
            "request" => Some(Scope::Request),
            _ => None,
        }
    }
}

/// Most attributes a type has (slicer has three).
const ATTRIBUTES_COUNT_MAX: usize = 3;

/// One toxic as stored by the control plane and read by the data plane.
#[derive(Clone, Debug)]
pub struct Toxic {
    pub name: String,
    pub ty: ToxicType,
    /// The stream string exactly as sent (toxiproxy echoes it verbatim).
    pub stream: String,
    pub direction: Direction,
    pub toxicity: f32,
    pub scope: Scope,
    /// Values in [`ToxicType::attribute_names`] order; missing ones are 0.
    attributes: [i64; ATTRIBUTES_COUNT_MAX],
}

/// The body of `POST /proxies/{p}/toxics` (and of a config-file toxic).
#[derive(Deserialize, Default)]
struct ToxicCreateBody {
    name: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    stream: Option<String>,
    toxicity: Option<f64>,
    attributes: Option<Map<String, Value>>,
    toxicity_scope: Option<String>,
}

/// The body of a toxic update: `name`, `type` and `stream` are ignored.
#[derive(Deserialize)]
struct ToxicUpdateBody {
    toxicity: Option<f64>,
    attributes: Option<Map<String, Value>>,
    toxicity_scope: Option<String>,
}

impl Toxic {
    /// Builds a toxic from a create body, applying toxiproxy's defaults:
    /// stream `downstream`, toxicity 1, name `<type>_<stream>`.
    pub fn from_create_json(value: Value) -> Result<Toxic, ApiError> {
        let body: ToxicCreateBody = serde_json::from_value(value).map_err(ApiError::bad_body)?;
        let ty = body
            .ty
            .as_deref()
            .and_then(ToxicType::parse)
            .ok_or_else(|| ApiError::BadRequest("invalid toxic type".into()))?;
        let stream = match body.stream {
            Some(s) if !s.is_empty() => s,
            _ => "downstream".to_owned(),
        };
        let direction = Direction::parse(&stream)
            .ok_or_else(|| ApiError::BadRequest("stream was invalid, can be either upstream or downstream".into()))?;
        let name = match body.name {
            Some(n) if !n.is_empty() => n,
            _ => format!("{}_{}", ty.as_str(), stream),
        };
        check_name("toxic", &name)?;
        let mut toxic = Toxic {
            name,
            ty,
            stream,
            direction,
            toxicity: body.toxicity.map_or(Ok(1.0), toxicity)?,
            scope: Scope::Connection,
            attributes: [0; ATTRIBUTES_COUNT_MAX],
        };
        toxic.apply_scope(body.toxicity_scope.as_deref())?;
        if let Some(attrs) = body.attributes {
            toxic.merge_attributes(&attrs)?;
        }
        Ok(toxic)
    }

    /// Applies an update body: toxicity, attributes (merged) and scope.
    /// Validates everything before changing anything.
    pub fn updated(&self, value: Value) -> Result<Toxic, ApiError> {
        let body: ToxicUpdateBody = serde_json::from_value(value).map_err(ApiError::bad_body)?;
        let mut next = self.clone();
        if let Some(t) = body.toxicity {
            next.toxicity = toxicity(t)?;
        }
        next.apply_scope(body.toxicity_scope.as_deref())?;
        if let Some(attrs) = body.attributes {
            next.merge_attributes(&attrs)?;
        }
        Ok(next)
    }

    fn apply_scope(&mut self, scope: Option<&str>) -> Result<(), ApiError> {
        if let Some(s) = scope {
            self.scope = Scope::parse(s).ok_or_else(|| {
                ApiError::BadRequest("toxicity_scope was invalid, can be either connection or request".into())
            })?;
        }
        Ok(())
    }

    /// Merges known attributes; unknown keys are dropped (as toxiproxy does).
    /// Values must be JSON integer literals, as Go's decoder demands.
    fn merge_attributes(&mut self, attrs: &Map<String, Value>) -> Result<(), ApiError> {
        for (i, name) in self.ty.attribute_names().iter().enumerate() {
            if let Some(v) = attrs.get(*name) {
                self.attributes[i] = v.as_i64().ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "bad request body: attribute {name} must be an integer, got {v}"
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// A raw attribute value by name (0 when absent).
    pub fn attribute(&self, name: &str) -> i64 {
        self.ty
            .attribute_names()
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| self.attributes[i])
    }

    /// An attribute read as milliseconds, clamped to `0..=TOXIC_DURATION_MS_MAX`.
    pub fn millis(&self, name: &str) -> std::time::Duration {
        let ms = self.attribute(name).clamp(0, TOXIC_DURATION_MS_MAX);
        std::time::Duration::from_millis(ms as u64)
    }

    /// Whether the roll `r` in `[0,1)` fires this toxic. toxicity ≥ 1 always
    /// fires, ≤ 0 never does (toxiproxy's `rand < toxicity` test).
    pub fn fires(&self, roll: f64) -> bool {
        roll < f64::from(self.toxicity)
    }
}

/// Proxy and toxic names are printable: non-empty, at most
/// [`NAME_BYTES_MAX`] bytes, no control characters (they appear in URLs,
/// logs and terminal tables, where a newline or an escape sequence forges
/// lines or rewrites the screen).
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::BadRequest(format!("{what} name is empty")));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(ApiError::BadRequest(format!(
            "{what} name longer than {NAME_BYTES_MAX} bytes"
        )));
    }
    if let Some((at, c)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(ApiError::BadRequest(format!(
            "{what} name must be printable: control character U+{:04X} at byte {at}",
            u32::from(c)
        )));
    }
    Ok(())
}

/// A toxicity is a probability: a finite number from 0 to 1. toxiproxy
/// stores anything (7, -1) and clamps its effect; here such a value is a
/// mistake worth a 400, not a silent "always" or "never".
fn toxicity(t: f64) -> Result<f32, ApiError> {
    if t.is_finite() && (0.0..=1.0).contains(&t) {
        Ok(t as f32)
    } else {
        Err(ApiError::BadRequest(format!(
            "toxicity must be a number from 0 to 1, got {t}"
        )))
    }
}

/// toxiproxy prints float32 toxicity with Go's shortest form: `1`, `0.3`.
fn serialize_toxicity<S: Serializer>(t: f32, s: S) -> Result<S::Ok, S::Error> {
    if t.is_finite() && t.fract() == 0.0 && t.abs() < 1e15 {
        s.serialize_i64(t as i64)
    } else {
        s.serialize_f32(t)
    }
}

struct Attributes<'a>(&'a Toxic);

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names = self.0.ty.attribute_names();
        let mut map = s.serialize_map(Some(names.len()))?;
        for (i, name) in names.iter().enumerate() {
            map.serialize_entry(name, &self.0.attributes[i])?;
        }
        map.end()
    }
}

struct Toxicity(f32);

impl Serialize for Toxicity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_toxicity(self.0, s)
    }
}

impl Serialize for Toxic {
    /// Keys in toxiproxy's order; `toxicity_scope` only when not the default,
    /// so that default output is byte-identical to toxiproxy's.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("attributes", &Attributes(self))?;
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("type", self.ty.as_str())?;
        map.serialize_entry("stream", &self.stream)?;
        map.serialize_entry("toxicity", &Toxicity(self.toxicity))?;
        if self.scope == Scope::Request {
            map.serialize_entry("toxicity_scope", "request")?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(v: Value) -> Result<String, String> {
        Toxic::from_create_json(v)
            .map(|t| serde_json::to_string(&t).unwrap_or_default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_key_order() {
        assert_eq!(
            create(json!({"type":"latency","attributes":{"latency":1}})),
            Ok(r#"{"attributes":{"latency":1,"jitter":0},"name":"latency_downstream","type":"latency","stream":"downstream","toxicity":1}"#.into())
        );
        assert_eq!(
            create(json!({"type":"reset_peer","stream":"UpStream","toxicity":0.3})),
            Ok(r#"{"attributes":{"timeout":0},"name":"reset_peer_UpStream","type":"reset_peer","stream":"UpStream","toxicity":0.3}"#.into())
        );
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(create(json!({"type":"down"})).is_err());
        assert!(create(json!({"type":"latency","stream":"sideways"})).is_err());
        assert!(create(json!({"type":"latency","attributes":{"latency":100.0}})).is_err());
        assert!(create(json!({"type":"latency","attributes":{"latency":"100"}})).is_err());
        assert!(create(json!({"type":"latency","toxicity":"x"})).is_err());
        assert!(create(json!({"type":"latency","toxicity_scope":"chunk"})).is_err());
        assert!(create(json!([1])).is_err());
    }

    #[test]
    fn update_merges_attributes_and_keeps_identity() {
        let t = Toxic::from_create_json(json!({"type":"slicer","attributes":{"average_size":10}}))
            .unwrap_or_else(|e| panic!("{e}"));
        let u = t
            .updated(json!({"name":"x","stream":"upstream","attributes":{"delay":5},"toxicity":0.5}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.name, "slicer_downstream");
        assert_eq!(u.direction, Direction::Downstream);
        assert_eq!(u.attribute("average_size"), 10);
        assert_eq!(u.attribute("delay"), 5);
        assert_eq!(u.toxicity, 0.5);
    }
}
