//! OpenAI's attribute filters (`filters` of a vector-store search and of `file_search`), and the
//! attributes they are evaluated against.
//!
//! A filter is a comparison, `{"type": "eq", "key": "dept", "value": "legal"}` (`eq ne gt gte
//! lt lte in nin`), or a compound, `{"type": "and", "filters": [...]}` (`and or`). It comes from
//! the caller, so [`Filter::parse`] bounds it before anything walks it: at most
//! [`MAX_FILTER_DEPTH`] levels and [`MAX_FILTER_NODES`] filters in all, lists of at most
//! [`MAX_FILTER_LIST`] values, strings of at most [`MAX_ATTRIBUTE_STRING`] characters; unknown
//! fields are refused. Errors name the place, e.g. `filters.filters[1].type`.
//!
//! Evaluation ([`Filter::matches`]) is total, never an error:
//! - `eq`/`in` hold when the attribute exists with the same type and value (a number is never
//!   equal to a string: `"2024"` is not `2024`); `ne`/`nin` are their negations, so they hold for
//!   a file without the attribute (as in MongoDB, and as "not equal" reads).
//! - `gt gte lt lte` compare numbers as numbers and strings by their UTF-8 bytes (ISO dates
//!   compare as dates); with booleans, mixed types or a missing attribute they do not hold.
//! - `and` holds when all of its filters hold, `or` when any does.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Most levels of nested filters (a lone comparison is one level).
pub const MAX_FILTER_DEPTH: usize = 8;
/// Most filters, comparisons and compounds together, in one filter.
pub const MAX_FILTER_NODES: usize = 64;
/// Most values in the list of an `in` or `nin`.
pub const MAX_FILTER_LIST: usize = 256;
/// OpenAI's bound on a file's attributes.
pub const MAX_ATTRIBUTES: usize = 16;
/// OpenAI's bound on an attribute's key, in characters.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// OpenAI's bound on an attribute's string value, in characters.
pub const MAX_ATTRIBUTE_STRING: usize = 512;

/// An attribute's value: OpenAI allows strings, numbers and booleans.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    /// A string.
    String(String),
    /// A number (JSON numbers are read as `f64`).
    Number(f64),
    /// A boolean.
    Bool(bool),
}

/// Integral numbers are written without a fraction (`2024`, not `2024.0`), as the client sent
/// them.
impl Serialize for AttrValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AttrValue::String(v) => s.serialize_str(v),
            AttrValue::Bool(v) => s.serialize_bool(*v),
            AttrValue::Number(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
                s.serialize_i64(*v as i64)
            }
            AttrValue::Number(v) => s.serialize_f64(*v),
        }
    }
}

impl AttrValue {
    /// The value of a JSON scalar; `None` for null, arrays, objects and numbers that are not
    /// finite `f64`s.
    pub fn from_json(v: &Value) -> Option<AttrValue> {
        match v {
            Value::String(s) => Some(AttrValue::String(s.clone())),
            Value::Bool(b) => Some(AttrValue::Bool(*b)),
            Value::Number(n) => n.as_f64().filter(|f| f.is_finite()).map(AttrValue::Number),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            AttrValue::String(_) => "string",
            AttrValue::Number(_) => "number",
            AttrValue::Bool(_) => "boolean",
        }
    }
}

/// A file's attributes, by key.
pub type Attributes = BTreeMap<String, AttrValue>;

/// Attributes OpenAI's API would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    /// More than [`MAX_ATTRIBUTES`] keys.
    #[error("attributes may have at most {MAX_ATTRIBUTES} keys, not {0}")]
    TooMany(usize),
    /// An empty key, or one over [`MAX_ATTRIBUTE_KEY`] characters.
    #[error("attribute key {0:?} must be 1 to {MAX_ATTRIBUTE_KEY} characters")]
    BadKey(String),
    /// A string value over [`MAX_ATTRIBUTE_STRING`] characters.
    #[error("attribute {0:?}: a string value may have at most {MAX_ATTRIBUTE_STRING} characters")]
    LongString(String),
    /// A number that is not finite.
    #[error("attribute {0:?}: a number must be finite")]
    NotFinite(String),
    /// A value that is not a string, number or boolean (JSON input only).
    #[error("attribute {0:?}: a value must be a string, a number or a boolean")]
    BadValue(String),
}

/// Checks attributes against OpenAI's bounds: at most 16 keys of 1 to 64 characters, strings of
/// at most 512 characters, finite numbers.
pub fn validate_attributes(attrs: &Attributes) -> Result<(), AttrError> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(AttrError::TooMany(attrs.len()));
    }
    for (k, v) in attrs {
        let n = k.chars().count();
        if n == 0 || n > MAX_ATTRIBUTE_KEY {
            return Err(AttrError::BadKey(k.clone()));
        }
        match v {
            AttrValue::String(s) if s.chars().count() > MAX_ATTRIBUTE_STRING => {
                return Err(AttrError::LongString(k.clone()))
            }
            AttrValue::Number(f) if !f.is_finite() => return Err(AttrError::NotFinite(k.clone())),
            _ => {}
        }
    }
    Ok(())
}

/// Reads and checks attributes from the wire's JSON object (see [`validate_attributes`]).
pub fn parse_attributes(json: &Map<String, Value>) -> Result<Attributes, AttrError> {
    if json.len() > MAX_ATTRIBUTES {
        return Err(AttrError::TooMany(json.len()));
    }
    let mut out = Attributes::new();
    for (k, v) in json {
        let value = AttrValue::from_json(v).ok_or_else(|| AttrError::BadValue(k.clone()))?;
        out.insert(k.clone(), value);
    }
    validate_attributes(&out)?;
    Ok(out)
}

/// The attributes of a stored JSON object, keeping what is a string, number or boolean and
/// dropping anything else (for rows checked by [`parse_attributes`] when they were written).
pub fn attributes_from_json(json: &Map<String, Value>) -> Attributes {
    json.iter()
        .filter_map(|(k, v)| AttrValue::from_json(v).map(|v| (k.clone(), v)))
        .collect()
}

/// An attribute filter: a comparison or a compound of filters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Filter {
    /// Compares one attribute with a value.
    Comparison(ComparisonFilter),
    /// Combines filters with `and` or `or`.
    Compound(CompoundFilter),
}

/// `{"type": op, "key": key, "value": value}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparisonFilter {
    /// The attribute compared.
    pub key: String,
    /// How.
    #[serde(rename = "type")]
    pub op: ComparisonOp,
    /// With what: a list for `in`/`nin`, a scalar otherwise.
    pub value: FilterValue,
}

/// A comparison's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComparisonOp {
    /// Equal.
    Eq,
    /// Not equal (holds when the attribute is missing).
    Ne,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// Equal to one of a list.
    In,
    /// Equal to none of a list (holds when the attribute is missing).
    Nin,
}

impl ComparisonOp {
    const ALL: [(&'static str, ComparisonOp); 8] = [
        ("eq", ComparisonOp::Eq),
        ("ne", ComparisonOp::Ne),
        ("gt", ComparisonOp::Gt),
        ("gte", ComparisonOp::Gte),
        ("lt", ComparisonOp::Lt),
        ("lte", ComparisonOp::Lte),
        ("in", ComparisonOp::In),
        ("nin", ComparisonOp::Nin),
    ];
}

/// A comparison's value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FilterValue {
    /// One value (`eq ne gt gte lt lte`).
    Scalar(AttrValue),
    /// A list of values (`in nin`).
    List(Vec<AttrValue>),
}

/// `{"type": op, "filters": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompoundFilter {
    /// How the filters combine.
    #[serde(rename = "type")]
    pub op: CompoundOp,
    /// The filters combined (at least one).
    pub filters: Vec<Filter>,
}

/// A compound's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompoundOp {
    /// All hold.
    And,
    /// Any holds.
    Or,
}

/// A filter that cannot be used; the message names where (`filters.filters[0].key`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Nested deeper than [`MAX_FILTER_DEPTH`].
    #[error("{path}: filters may be nested at most {MAX_FILTER_DEPTH} levels deep")]
    TooDeep {
        /// Where the limit was passed.
        path: String,
    },
    /// More than [`MAX_FILTER_NODES`] filters.
    #[error("{path}: a filter may hold at most {MAX_FILTER_NODES} filters in all")]
    TooMany {
        /// Where the limit was passed.
        path: String,
    },
    /// Not a filter's shape.
    #[error("{path}: {message}")]
    Invalid {
        /// Where.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(path: &str, message: impl Into<String>) -> FilterError {
    FilterError::Invalid {
        path: path.to_string(),
        message: message.into(),
    }
}

impl Filter {
    /// Reads and checks a filter from JSON (the request's `filters`), within the bounds of the
    /// module's constants. Nothing deeper than the bound is visited.
    pub fn parse(json: &Value) -> Result<Filter, FilterError> {
        let mut nodes = 0;
        parse_node(json, "filters", 1, &mut nodes)
    }

    /// Whether a file with these attributes passes the filter.
    pub fn matches(&self, attrs: &Attributes) -> bool {
        match self {
            Filter::Comparison(c) => c.matches(attrs),
            Filter::Compound(c) => match c.op {
                CompoundOp::And => c.filters.iter().all(|f| f.matches(attrs)),
                CompoundOp::Or => c.filters.iter().any(|f| f.matches(attrs)),
            },
        }
    }
}

/// Reads a filter through [`Filter::parse`], so a request type may hold one.
impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Filter::parse(&v).map_err(serde::de::Error::custom)
    }
}

impl ComparisonFilter {
    /// Whether a file with these attributes passes this comparison (see the module's rules).
    pub fn matches(&self, attrs: &Attributes) -> bool {
        let have = attrs.get(&self.key);
        match (&self.value, self.op) {
            (FilterValue::Scalar(want), ComparisonOp::Eq) => have == Some(want),
            (FilterValue::Scalar(want), ComparisonOp::Ne) => have != Some(want),
            (FilterValue::List(list), ComparisonOp::In) => have.is_some_and(|h| list.contains(h)),
            (FilterValue::List(list), ComparisonOp::Nin) => !have.is_some_and(|h| list.contains(h)),
            (FilterValue::Scalar(want), op) => {
                let order = match (have, want) {
                    (Some(AttrValue::Number(h)), AttrValue::Number(w)) => h.partial_cmp(w),
                    (Some(AttrValue::String(h)), AttrValue::String(w)) => Some(h.as_str().cmp(w)),
                    _ => None,
                };
                match (order, op) {
                    (Some(o), ComparisonOp::Gt) => o.is_gt(),
                    (Some(o), ComparisonOp::Gte) => o.is_ge(),
                    (Some(o), ComparisonOp::Lt) => o.is_lt(),
                    (Some(o), ComparisonOp::Lte) => o.is_le(),
                    _ => false,
                }
            }
            // `parse` pairs lists with in/nin only; a hand-built mismatch holds for nothing.
            (FilterValue::List(_), _) => false,
        }
    }
}

fn parse_node(
    json: &Value,
    path: &str,
    depth: usize,
    nodes: &mut usize,
) -> Result<Filter, FilterError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(FilterError::TooDeep {
            path: path.to_string(),
        });
    }
    *nodes += 1;
    if *nodes > MAX_FILTER_NODES {
        return Err(FilterError::TooMany {
            path: path.to_string(),
        });
    }
    let obj = json
        .as_object()
        .ok_or_else(|| invalid(path, "a filter must be an object"))?;
    let ty = obj
        .get("type")
        .ok_or_else(|| invalid(path, "missing field `type`"))?
        .as_str()
        .ok_or_else(|| invalid(&format!("{path}.type"), "must be a string"))?;
    let unknown = |allowed: &[&str]| {
        obj.keys()
            .find(|k| !allowed.contains(&k.as_str()))
            .map(|k| invalid(path, format!("unknown field `{k}`")))
    };
    match ty {
        "and" | "or" => {
            if let Some(e) = unknown(&["type", "filters"]) {
                return Err(e);
            }
            let op = if ty == "and" {
                CompoundOp::And
            } else {
                CompoundOp::Or
            };
            let list = obj
                .get("filters")
                .ok_or_else(|| invalid(path, "missing field `filters`"))?
                .as_array()
                .ok_or_else(|| invalid(&format!("{path}.filters"), "must be an array"))?;
            if list.is_empty() {
                return Err(invalid(
                    &format!("{path}.filters"),
                    "must hold at least one filter",
                ));
            }
            let mut filters = Vec::with_capacity(list.len().min(MAX_FILTER_NODES));
            for (i, f) in list.iter().enumerate() {
                filters.push(parse_node(
                    f,
                    &format!("{path}.filters[{i}]"),
                    depth + 1,
                    nodes,
                )?);
            }
            Ok(Filter::Compound(CompoundFilter { op, filters }))
        }
        _ => {
            let op = ComparisonOp::ALL
                .iter()
                .find(|(name, _)| *name == ty)
                .map(|(_, op)| *op)
                .ok_or_else(|| {
                    invalid(
                        &format!("{path}.type"),
                        format!(
                            "unknown filter type {ty:?}; expected one of eq, ne, gt, gte, lt, \
                             lte, in, nin, and, or"
                        ),
                    )
                })?;
            if let Some(e) = unknown(&["type", "key", "value"]) {
                return Err(e);
            }
            let key = obj
                .get("key")
                .ok_or_else(|| invalid(path, "missing field `key`"))?
                .as_str()
                .ok_or_else(|| invalid(&format!("{path}.key"), "must be a string"))?;
            let n = key.chars().count();
            if n == 0 || n > MAX_ATTRIBUTE_KEY {
                return Err(invalid(
                    &format!("{path}.key"),
                    format!("must be 1 to {MAX_ATTRIBUTE_KEY} characters"),
                ));
            }
            let vpath = format!("{path}.value");
            let value = obj
                .get("value")
                .ok_or_else(|| invalid(path, "missing field `value`"))?;
            let value = match (op, value) {
                (ComparisonOp::In | ComparisonOp::Nin, Value::Array(items)) => {
                    if items.len() > MAX_FILTER_LIST {
                        return Err(invalid(
                            &vpath,
                            format!("a list may hold at most {MAX_FILTER_LIST} values"),
                        ));
                    }
                    let mut list = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        list.push(scalar(item, &format!("{vpath}[{i}]"))?);
                    }
                    FilterValue::List(list)
                }
                (ComparisonOp::In | ComparisonOp::Nin, _) => {
                    return Err(invalid(&vpath, format!("`{ty}` takes an array of values")))
                }
                (_, Value::Array(_)) => {
                    return Err(invalid(
                        &vpath,
                        format!("`{ty}` takes a string, a number or a boolean, not an array"),
                    ))
                }
                (_, v) => FilterValue::Scalar(scalar(v, &vpath)?),
            };
            if let (
                ComparisonOp::Gt | ComparisonOp::Gte | ComparisonOp::Lt | ComparisonOp::Lte,
                FilterValue::Scalar(v @ AttrValue::Bool(_)),
            ) = (op, &value)
            {
                return Err(invalid(
                    &vpath,
                    format!(
                        "`{ty}` compares numbers or strings, not a {}",
                        v.type_name()
                    ),
                ));
            }
            Ok(Filter::Comparison(ComparisonFilter {
                key: key.to_string(),
                op,
                value,
            }))
        }
    }
}

fn scalar(v: &Value, path: &str) -> Result<AttrValue, FilterError> {
    let value = AttrValue::from_json(v)
        .ok_or_else(|| invalid(path, "must be a string, a number or a boolean"))?;
    if let AttrValue::String(s) = &value {
        if s.chars().count() > MAX_ATTRIBUTE_STRING {
            return Err(invalid(
                path,
                format!("a string may have at most {MAX_ATTRIBUTE_STRING} characters"),
            ));
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: Value) -> Attributes {
        parse_attributes(v.as_object().unwrap()).unwrap()
    }

    fn f(v: Value) -> Filter {
        Filter::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn err(v: Value) -> String {
        Filter::parse(&v).unwrap_err().to_string()
    }

    #[test]
    fn comparisons_follow_the_documented_rules() {
        let a = attrs(json!({"dept": "legal", "year": 2024, "draft": false, "date": "2024-03-01"}));
        let holds = |v: Value| f(v).matches(&a);
        assert!(holds(
            json!({"type": "eq", "key": "dept", "value": "legal"})
        ));
        assert!(!holds(
            json!({"type": "eq", "key": "dept", "value": "Legal"})
        ));
        assert!(holds(json!({"type": "eq", "key": "year", "value": 2024.0})));
        assert!(
            !holds(json!({"type": "eq", "key": "year", "value": "2024"})),
            "types differ"
        );
        assert!(holds(json!({"type": "eq", "key": "draft", "value": false})));
        assert!(!holds(json!({"type": "eq", "key": "missing", "value": 1})));
        assert!(holds(json!({"type": "ne", "key": "dept", "value": "hr"})));
        assert!(holds(
            json!({"type": "ne", "key": "missing", "value": "hr"})
        ));
        assert!(!holds(
            json!({"type": "ne", "key": "dept", "value": "legal"})
        ));
        assert!(holds(json!({"type": "gt", "key": "year", "value": 2023})));
        assert!(!holds(json!({"type": "gt", "key": "year", "value": 2024})));
        assert!(holds(json!({"type": "gte", "key": "year", "value": 2024})));
        assert!(holds(json!({"type": "lt", "key": "year", "value": 2024.5})));
        assert!(holds(json!({"type": "lte", "key": "year", "value": 2024})));
        assert!(
            !holds(json!({"type": "lt", "key": "year", "value": "3000"})),
            "mixed types"
        );
        assert!(!holds(json!({"type": "gt", "key": "missing", "value": 0})));
        assert!(holds(
            json!({"type": "gte", "key": "date", "value": "2024-01-01"})
        ));
        assert!(!holds(
            json!({"type": "gte", "key": "date", "value": "2024-12-01"})
        ));
        assert!(holds(
            json!({"type": "in", "key": "dept", "value": ["hr", "legal"]})
        ));
        assert!(!holds(json!({"type": "in", "key": "dept", "value": []})));
        assert!(!holds(
            json!({"type": "in", "key": "missing", "value": ["x"]})
        ));
        assert!(holds(
            json!({"type": "in", "key": "year", "value": [2023, 2024]})
        ));
        assert!(!holds(
            json!({"type": "nin", "key": "dept", "value": ["hr", "legal"]})
        ));
        assert!(holds(
            json!({"type": "nin", "key": "dept", "value": ["hr"]})
        ));
        assert!(holds(
            json!({"type": "nin", "key": "missing", "value": ["hr"]})
        ));
    }

    #[test]
    fn compounds_nest() {
        let a = attrs(json!({"dept": "legal", "year": 2024}));
        let legal = json!({"type": "eq", "key": "dept", "value": "legal"});
        let old = json!({"type": "lt", "key": "year", "value": 2020});
        assert!(!f(json!({"type": "and", "filters": [legal, old]})).matches(&a));
        assert!(f(json!({"type": "or", "filters": [legal, old]})).matches(&a));
        assert!(f(json!({"type": "and", "filters": [
            {"type": "or", "filters": [old, legal]},
            {"type": "ne", "key": "dept", "value": "hr"}
        ]}))
        .matches(&a));
    }

    #[test]
    fn bad_filters_are_refused_with_their_place() {
        assert_eq!(err(json!([])), "filters: a filter must be an object");
        assert_eq!(
            err(json!({"key": "a", "value": 1})),
            "filters: missing field `type`"
        );
        assert!(err(json!({"type": "like", "key": "a", "value": 1}))
            .starts_with("filters.type: unknown filter type \"like\""));
        assert_eq!(
            err(json!({"type": "eq", "value": 1})),
            "filters: missing field `key`"
        );
        assert_eq!(
            err(json!({"type": "eq", "key": "a"})),
            "filters: missing field `value`"
        );
        assert_eq!(
            err(json!({"type": "eq", "key": "a", "value": 1, "extra": 2})),
            "filters: unknown field `extra`"
        );
        assert_eq!(
            err(json!({"type": "eq", "key": "a", "value": null})),
            "filters.value: must be a string, a number or a boolean"
        );
        assert!(err(json!({"type": "eq", "key": "a", "value": [1]})).contains("not an array"));
        assert!(err(json!({"type": "in", "key": "a", "value": 1})).contains("array of values"));
        assert!(err(json!({"type": "gt", "key": "a", "value": true})).contains("not a boolean"));
        assert_eq!(
            err(json!({"type": "in", "key": "a", "value": [1, {"x": 1}]})),
            "filters.value[1]: must be a string, a number or a boolean"
        );
        assert!(err(json!({"type": "eq", "key": "", "value": 1})).starts_with("filters.key:"));
        assert!(err(json!({"type": "eq", "key": "k".repeat(65), "value": 1})).contains("1 to 64"));
        assert!(err(json!({"type": "eq", "key": "a", "value": "v".repeat(513)})).contains("512"));
        assert!(err(json!({"type": "in", "key": "a", "value": vec![1; 257]})).contains("256"));
        assert_eq!(
            err(json!({"type": "and", "filters": []})),
            "filters.filters: must hold at least one filter"
        );
        assert_eq!(
            err(json!({"type": "or", "filters": [{"type": "eq", "key": "a", "value": 1}, {"type": "x"}]})),
            "filters.filters[1].type: unknown filter type \"x\"; expected one of eq, ne, gt, gte, lt, lte, in, nin, and, or"
        );
    }

    /// `depth` levels: `depth - 1` ands around one comparison.
    fn nested(depth: usize) -> Value {
        let mut v = json!({"type": "eq", "key": "a", "value": 1});
        for _ in 1..depth {
            v = json!({"type": "and", "filters": [v]});
        }
        v
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let a = attrs(json!({"a": 1}));
        assert!(f(nested(MAX_FILTER_DEPTH)).matches(&a));
        let e = err(nested(MAX_FILTER_DEPTH + 1));
        assert!(e.contains("at most 8 levels"), "{e}");
        assert!(e.starts_with("filters.filters[0]"), "{e}");
        // A deep input (past serde_json's own recursion limit for text, 128) is refused without
        // being walked; built as a Value directly.
        let mut deep = json!({"type": "eq", "key": "a", "value": 1});
        for _ in 0..1_000 {
            deep = json!({"type": "and", "filters": [deep]});
        }
        assert!(Filter::parse(&deep)
            .unwrap_err()
            .to_string()
            .contains("levels"));
        // 63 comparisons under one and: 64 filters.
        let leaf = json!({"type": "eq", "key": "a", "value": 1});
        let wide = |n: usize| json!({"type": "and", "filters": vec![leaf.clone(); n]});
        assert!(f(wide(MAX_FILTER_NODES - 1)).matches(&a));
        let e = err(wide(MAX_FILTER_NODES));
        assert_eq!(
            e,
            "filters.filters[63]: a filter may hold at most 64 filters in all"
        );
    }

    #[test]
    fn a_filter_reads_through_serde_and_writes_back_the_same_json() {
        let v = json!({"type": "and", "filters": [
            {"type": "in", "key": "dept", "value": ["hr", 3, true]},
            {"type": "gte", "key": "year", "value": 2024}
        ]});
        let parsed: Filter = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), v);
        let bad = serde_json::from_value::<Filter>(json!({"type": "eq"})).unwrap_err();
        assert_eq!(bad.to_string(), "filters: missing field `key`");
    }

    #[test]
    fn attributes_are_bounded_like_openais() {
        let ok = json!({"a": "x", "n": 1.5, "b": true});
        let a = attrs(ok.clone());
        assert_eq!(serde_json::to_value(&a).unwrap(), ok);
        assert_eq!(
            serde_json::to_value(attrs(json!({"year": 2024}))).unwrap(),
            json!({"year": 2024}),
            "an integer stays an integer"
        );
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(parse_attributes(&many), Err(AttrError::TooMany(17)));
        let p = |v: Value| parse_attributes(v.as_object().unwrap());
        assert_eq!(p(json!({"": 1})), Err(AttrError::BadKey(String::new())));
        assert!(p(json!({"k".repeat(64): 1})).is_ok());
        assert!(matches!(
            p(json!({"k".repeat(65): 1})),
            Err(AttrError::BadKey(_))
        ));
        assert!(
            p(json!({"s": "é".repeat(512)})).is_ok(),
            "characters, not bytes"
        );
        assert_eq!(
            p(json!({"s": "v".repeat(513)})),
            Err(AttrError::LongString("s".into()))
        );
        assert_eq!(p(json!({"x": null})), Err(AttrError::BadValue("x".into())));
        assert_eq!(p(json!({"x": [1]})), Err(AttrError::BadValue("x".into())));
        let mut direct = Attributes::new();
        direct.insert("n".into(), AttrValue::Number(f64::NAN));
        assert_eq!(
            validate_attributes(&direct),
            Err(AttrError::NotFinite("n".into()))
        );
        // Stored rows: what is not a scalar is dropped, not an error.
        let stored = json!({"a": 1, "b": null, "c": {"x": 1}});
        let got = attributes_from_json(stored.as_object().unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!(got["a"], AttrValue::Number(1.0));
    }
}
