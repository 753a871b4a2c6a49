//! Core errors as JavaScript errors.
//!
//! Every binding that fails throws a JS `Error` whose `name` is `TrustfoldError`,
//! whose `message` is the core error's message (its `Display`, word for word) and
//! whose `code` is [`Error::code`], the stable code shared with the Rust API and the
//! HTTP API. History errors also carry the offending `seq`; policy errors the `field`.

use trustfold_core::Error;
use wasm_bindgen::{JsCast, JsValue};

/// Result of a binding: errors are JS values (a `TrustfoldError`).
pub type JsResult<T> = Result<T, JsValue>;

/// Builds the JS error for a core error.
pub fn to_js(e: &Error) -> JsValue {
    make(e.code(), &e.to_string(), e.seq(), e.field())
}

/// A `TrustfoldError` with an explicit code (for errors the SDK itself raises).
pub fn js_error(code: &str, message: &str) -> JsValue {
    make(code, message, None, None)
}

fn make(code: &str, message: &str, seq: Option<u64>, field: Option<&str>) -> JsValue {
    let err = js_sys::Error::new(message);
    err.set_name("TrustfoldError");
    let obj: &JsValue = err.as_ref();
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(obj, &"code".into(), &code.into());
    if let Some(seq) = seq {
        let _ = js_sys::Reflect::set(obj, &"seq".into(), &JsValue::from_f64(seq as f64));
    }
    if let Some(field) = field {
        let _ = js_sys::Reflect::set(obj, &"field".into(), &field.into());
    }
    err.into()
}

/// Converts core results into binding results.
pub trait IntoJs<T> {
    /// Maps the error with [`to_js`].
    fn js(self) -> JsResult<T>;
}

impl<T> IntoJs<T> for Result<T, Error> {
    fn js(self) -> JsResult<T> {
        self.map_err(|e| to_js(&e))
    }
}

/// Bytes of a `string | Uint8Array` argument.
pub fn input_bytes(v: &JsValue, what: &str) -> JsResult<Vec<u8>> {
    if let Some(s) = v.as_string() {
        return Ok(s.into_bytes());
    }
    if let Some(bytes) = v.dyn_ref::<js_sys::Uint8Array>() {
        if bytes.length() == 0 {
            // Nothing to copy; and a detached buffer (refused by the typed layer, which
            // names it) reads as empty, but copying from it would throw a TypeError.
            return Ok(Vec::new());
        }
        // Copied once into the module's memory (`Uint8Array::new` would copy it in JS
        // first).
        return Ok(bytes.to_vec());
    }
    Err(js_error(
        "invalid_input",
        &format!("{what} must be a string or a Uint8Array"),
    ))
}

/// The items of a JS iterable (an array, typed array, set…), each converted by `item`;
/// `None` if `v` is not iterable or an item does not convert.
pub fn items<T>(v: &JsValue, item: impl Fn(&JsValue) -> Option<T>) -> Option<Vec<T>> {
    let iter = js_sys::try_iter(v).ok()??;
    let mut out = Vec::new();
    for x in iter {
        out.push(item(&x.ok()?)?);
    }
    Some(out)
}

/// An optional string property of a JS object: `Ok(None)` when absent, `undefined`
/// or `null`, an `invalid_input` error naming it when it is anything but a string.
pub fn string_prop(obj: &JsValue, name: &str, what: &str) -> JsResult<Option<String>> {
    let v = js_sys::Reflect::get(obj, &name.into())
        .map_err(|_| js_error("invalid_input", &format!("{what}: reading `{name}` threw")))?;
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_string().map(Some).ok_or_else(|| {
        js_error(
            "invalid_input",
            &format!("{what}: `{name}` must be a string"),
        )
    })
}

/// A JS number as JavaScript writes it (for messages: Rust's own float printing would
/// add about 10 KB to the module).
pub fn number_text(n: f64) -> String {
    js_sys::Number::from(n)
        .to_string_with_radix(10)
        .map(String::from)
        .unwrap_or_default()
}

/// A whole number from 0 to 2^53 − 1 (a JS number that is an exact integer), else
/// `None`.
pub fn whole(n: f64) -> Option<u64> {
    (n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0).then_some(n as u64)
}

/// Serializes a result object for JS (plain objects, not `Map`s).
pub fn to_value<T: serde::Serialize>(v: &T) -> JsResult<JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| js_error("internal", &e.to_string()))
}
