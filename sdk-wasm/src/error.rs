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
        // Copied once into the module's memory (`Uint8Array::new` would copy it in JS
        // first).
        return Ok(bytes.to_vec());
    }
    Err(js_error(
        "invalid_input",
        &format!("{what} must be a string or a Uint8Array"),
    ))
}

/// Serializes a result object for JS (plain objects, not `Map`s).
pub fn to_value<T: serde::Serialize>(v: &T) -> JsResult<JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| js_error("internal", &e.to_string()))
}
