//! Request bodies: read up to the limit, JSON only, one object, no key twice.
//!
//! Every POST body is a JSON object. [`Body`] refuses a body sent with a `Content-Type`
//! other than `application/json` (415, `+json` types included; a body without the
//! header is read as JSON) and one over the limit (413). [`parse_json`] reads it
//! strictly: a key given twice anywhere is a 400, not "the last one wins" (two parsers
//! reading `{"amount":"1","amount":"1000"}` differently is how payment requests get
//! smuggled), and so is an array where the object belongs. Errors name the offending
//! field as a path (`command.party`).
//!
//! ```
//! use trustfold_server::api::body::parse_json;
//! #[derive(serde::Deserialize, Debug)]
//! struct Req { name: String }
//! assert_eq!(parse_json::<Req>(br#"{"name":"a"}"#).unwrap().name, "a");
//! let twice = parse_json::<Req>(br#"{"name":"a","name":"b"}"#).unwrap_err();
//! assert_eq!(twice.code(), "duplicate_key");
//! assert_eq!(parse_json::<Req>(br#"["a"]"#).unwrap_err().code(), "invalid_request");
//! ```

use std::fmt;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};
use super::AppState;

/// A request body, read up to the limit (413 beyond it) within [`body_wait`] (408
/// `request_timeout` after it); 415 when it is declared as something other than JSON.
pub struct Body(pub Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let declared = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        // A body that trickles in (or stops) is the client's doing: 408, answered before
        // the request's own deadline would call it the database's (503).
        let wait = body_wait(state.config.request_timeout);
        let read = tokio::time::timeout(wait, Bytes::from_request(req, state)).await;
        let Ok(read) = read else {
            return Err(ApiError::BodyTimeout {
                seconds: wait.as_secs(),
            });
        };
        let body = match read {
            Ok(b) => b,
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge {
                    limit: state.config.body_limit,
                })
            }
            Err(rej) => {
                return Err(ApiError::BadRequest {
                    code: "unreadable_body",
                    message: format!("the request body could not be read: {rej}"),
                    field: None,
                })
            }
        };
        match declared {
            Some(t) if !body.is_empty() && !is_json(&t) => Err(ApiError::UnsupportedMediaType(t)),
            _ => Ok(Body(body)),
        }
    }
}

/// How long a request body may take to arrive: half the request's deadline (at least
/// 1 s), which leaves the other half to run the request once it is here.
pub fn body_wait(request_timeout: std::time::Duration) -> std::time::Duration {
    (request_timeout / 2).max(std::time::Duration::from_secs(1))
}

/// `application/json`, with parameters if any (a `charset`, if given, must be UTF-8:
/// JSON exchanged between systems is UTF-8, RFC 8259 §8.1). Nothing else: not `text/json`
/// and not the `+json` types, which name other formats (`application/json-patch+json`
/// is a list of patch operations, `application/problem+json` an error document); a
/// body declared as one of them is not the request this API reads.
fn is_json(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let utf8 = parts.all(|p| match p.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let v = value.trim().trim_matches('"');
            v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    utf8 && essence == "application/json"
}

/// Parses a JSON body into `T`: 400 `malformed_json` for bad syntax, 400
/// `duplicate_key` for a key given twice, 400 `invalid_request` for the wrong shape
/// (not an object, a missing or unknown field, a value of the wrong type), 422 with
/// the core's code (e.g. `invalid_amount_scale`) for values the domain rejects, with
/// the value's path as `field` where serde gives one (`amount`).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let value = strict_value(body)?;
    if !value.is_object() {
        return Err(ApiError::BadRequest {
            code: "invalid_request",
            message: "the request body must be a JSON object".into(),
            field: None,
        });
    }
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let core: trustfold_core::Error = e.into_inner().into();
        match core {
            trustfold_core::Error::MalformedJson(m) => ApiError::BadRequest {
                code: "invalid_request",
                field: field_at(&path, &m),
                message: m,
            },
            other => at_path(ApiError::from_core(other), &path),
        }
    })
}

/// A 422 about a value without a field of its own, given the value's `path` (as
/// `serde_path_to_error` writes it; `.` for the whole document) as its field.
fn at_path(e: ApiError, path: &str) -> ApiError {
    match e {
        ApiError::Unprocessable {
            code,
            message,
            field: None,
        } if path != "." && !path.is_empty() => ApiError::Unprocessable {
            code,
            message,
            field: Some(path.to_owned()),
        },
        other => other,
    }
}

/// Where in `value` an amount is that the core refuses with `code` (`invalid_amount`,
/// `invalid_amount_scale`, `unknown_currency`, ...), as a path the way serde writes
/// them (`amount`, `allocations[0].amount.currency`): the first object that, read as
/// [`Money`](trustfold_core::money::Money), is refused with that code. For a value
/// error found by a reader that says what is wrong but not where (the core's reader of
/// commands, whose variants serde's path tracking cannot see into); `None` for other
/// codes, or when no amount is found.
pub fn refused_amount_at(value: &Value, code: &str) -> Option<String> {
    fn join(at: &str, name: &str) -> String {
        match (at.is_empty(), name.is_empty()) {
            (true, _) => name.to_owned(),
            (_, true) => at.to_owned(),
            _ => format!("{at}.{name}"),
        }
    }
    fn walk(v: &Value, at: &str, code: &str) -> Option<String> {
        match v {
            Value::Object(m) => {
                let refused =
                    serde_path_to_error::deserialize::<_, trustfold_core::money::Money>(v)
                        .err()
                        .map(|e| {
                            let path = e.path().to_string();
                            let core: trustfold_core::Error = e.into_inner().into();
                            (core.code(), path)
                        });
                if let Some((c, path)) = refused {
                    if c == code {
                        return Some(join(at, if path == "." { "" } else { &path }));
                    }
                }
                m.iter().find_map(|(k, x)| walk(x, &join(at, k), code))
            }
            Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, x)| walk(x, &format!("{at}[{i}]"), code)),
            _ => None,
        }
    }
    const AMOUNT_CODES: &[&str] = &[
        "invalid_amount",
        "invalid_amount_scale",
        "non_positive_amount",
        "unknown_currency",
        "amount_overflow",
    ];
    AMOUNT_CODES
        .contains(&code)
        .then(|| walk(value, "", code))
        .flatten()
        .filter(|p| !p.is_empty())
}

/// The body as a JSON value, refusing syntax errors (`malformed_json`) and keys given
/// twice in one object (`duplicate_key`, with the key's path as the field).
pub fn strict_value(body: &[u8]) -> ApiResult<Value> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        match message.strip_prefix(DUPLICATE) {
            Some(rest) => {
                let key = rest.split('`').next().unwrap_or("");
                ApiError::BadRequest {
                    code: "duplicate_key",
                    message: format!("the key `{key}` is given twice; give it once"),
                    // The path is the object's; the field is the key in it.
                    field: Some(if path == "." {
                        key.to_owned()
                    } else {
                        format!("{path}.{key}")
                    }),
                }
            }
            None => ApiError::MalformedJson(message),
        }
    });
    let StrictValue(value) = value?;
    de.end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

const DUPLICATE: &str = "duplicate key `";

/// The body's JSON in one canonical form, for comparing two requests by meaning: object
/// keys sorted (explicitly, whatever order `serde_json::Map` keeps), no whitespace,
/// strings as serde_json escapes them, numbers as serde_json writes them. So the same
/// request pretty-printed, with its keys in another order or other escapes, has the same
/// form. `None` for a body that is not strict JSON (it will be refused anyway).
///
/// ```
/// use trustfold_server::api::body::canonical_json;
/// let a = canonical_json(br#"{"b": [1, {"d": "\u0041", "c": null}], "a": true}"#);
/// assert_eq!(a.as_deref(), Some(&br#"{"a":true,"b":[1,{"c":null,"d":"A"}]}"#[..]));
/// assert_eq!(canonical_json(b"{\"a\":1,\"a\":2}"), None);
/// ```
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_unstable();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(&Value::String(k.clone()), out);
                    out.push(b':');
                    if let Some(v) = map.get(k) {
                        write(v, out);
                    }
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(v, out);
                }
                out.push(b']');
            }
            scalar => out.extend_from_slice(&serde_json::to_vec(scalar).unwrap_or_default()),
        }
    }
    let value = strict_value(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    write(&value, &mut out);
    Some(out)
}

/// For a struct-typed field (`#[serde(deserialize_with = "body::object")]`): read it
/// only from a JSON object. serde's derived struct decoders also take an array of the
/// fields in order (`"amount":["5000.00","USD"]`), which the API refuses as it refuses
/// an array for the whole body.
///
/// ```
/// use trustfold_server::api::body::parse_json;
/// #[derive(serde::Deserialize, Debug)]
/// struct Inner { n: u32 }
/// #[derive(serde::Deserialize, Debug)]
/// struct Outer {
///     #[serde(deserialize_with = "trustfold_server::api::body::object")]
///     inner: Inner,
/// }
/// assert_eq!(parse_json::<Outer>(br#"{"inner":{"n":1}}"#).unwrap().inner.n, 1);
/// let e = parse_json::<Outer>(br#"{"inner":[1]}"#).unwrap_err();
/// assert_eq!(e.code(), "invalid_request");
/// ```
pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Only<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Only<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(Only(std::marker::PhantomData))
}

/// [`object`] for an optional field: absent or `null` is `None`.
pub fn optional_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Maybe<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Maybe<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Option<T>, D2::Error> {
            object(d).map(Some)
        }
    }
    d.deserialize_option(Maybe(std::marker::PhantomData))
}

/// The field an error is about: the path where it happened, plus the field a serde
/// message names there (`missing field `x``, `unknown field `x``).
fn field_at(path: &str, message: &str) -> Option<String> {
    let named = field_of(message);
    let path = (path != "." && !path.is_empty()).then_some(path);
    match (path, named) {
        (Some(p), Some(n)) if !p.ends_with(&n) => Some(format!("{p}.{n}")),
        (Some(p), _) => Some(p.to_owned()),
        (None, n) => n,
    }
}

/// The field a serde message names (`missing field `x``, `unknown field `x``).
fn field_of(message: &str) -> Option<String> {
    let start = message.find('`')?;
    let rest = &message[start + 1..];
    let end = rest.find('`')?;
    let f = &rest[..end];
    (message.contains("field") && !f.is_empty()).then(|| f.to_owned())
}

/// A JSON value read without letting a later key overwrite an earlier one.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|StrictValue(v)| v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("{DUPLICATE}{key}`")));
            }
            let StrictValue(v) = map.next_value_seed(Seed)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

struct Seed;

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = StrictValue;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<StrictValue, D::Error> {
        StrictValue::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        id: uuid::Uuid,
        n: u32,
    }

    fn err(body: &str) -> (String, Option<String>) {
        let e = parse_json::<Outer>(body.as_bytes()).unwrap_err();
        let field = match &e {
            ApiError::BadRequest { field, .. } | ApiError::Unprocessable { field, .. } => {
                field.clone()
            }
            _ => None,
        };
        (e.code().to_owned(), field)
    }

    #[test]
    fn duplicates_are_refused_wherever_they_are() {
        let id = "\"6f9d2c1e-8a4b-4c3d-9e5f-1a2b3c4d5e6f\"";
        assert_eq!(
            err(&format!(r#"{{"inner":{{"id":{id},"n":1,"n":2}}}}"#)),
            ("duplicate_key".into(), Some("inner.n".into()))
        );
        assert_eq!(
            err(&format!(r#"{{"inner":{{"id":{id},"n":1}},"inner":{{}}}}"#)),
            ("duplicate_key".into(), Some("inner".into()))
        );
        assert_eq!(
            strict_value(br#"{"a":[{"b":1,"b":1}]}"#)
                .unwrap_err()
                .code(),
            "duplicate_key"
        );
        // The same key in different objects is fine.
        assert!(strict_value(br#"{"a":{"b":1},"c":{"b":1}}"#).is_ok());
    }

    #[test]
    fn errors_name_the_field_as_a_path() {
        assert_eq!(
            err(r#"{"inner":{"id":"nope","n":1}}"#),
            ("invalid_request".into(), Some("inner.id".into()))
        );
        assert_eq!(
            err(r#"{"inner":{"id":"6f9d2c1e-8a4b-4c3d-9e5f-1a2b3c4d5e6f"}}"#),
            ("invalid_request".into(), Some("inner.n".into()))
        );
        assert_eq!(
            err(r#"{"inner":{"id":"6f9d2c1e-8a4b-4c3d-9e5f-1a2b3c4d5e6f","n":1,"x":0}}"#),
            ("invalid_request".into(), Some("inner.x".into()))
        );
        assert_eq!(
            err(r#"{}"#),
            ("invalid_request".into(), Some("inner".into()))
        );
        assert_eq!(err(r#"[{"id":1}]"#).0, "invalid_request");
        assert_eq!(err(r#"{"inner":{} "#).0, "malformed_json");
        assert_eq!(err(r#"{"inner":{}} x"#).0, "malformed_json");
    }

    #[test]
    fn json_content_types() {
        for t in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json(t), "{t}");
        }
        for t in [
            "application/problem+json",
            "application/json-patch+json",
            "text/json",
            "application/json; charset=latin1",
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "",
        ] {
            assert!(!is_json(t), "{t}");
        }
    }
}
