//! Money on decimal strings: exact arithmetic with the core's rules (amounts at the
//! currency's scale, no floats), so a widget computes splits and fees exactly as the
//! server will.

use trustfold_core::money::{Currency, Money};
use wasm_bindgen::prelude::*;

use crate::error::{items, js_error, number_text, to_value, whole, IntoJs, JsResult};

fn money(amount: &str, currency: &str) -> JsResult<Money> {
    let c = Currency::new(currency).js()?;
    Money::parse(amount, c).js()
}

/// `a + b` in `currency`, e.g. `moneyAdd("1.10", "2", "USD") == "3.10"`.
#[wasm_bindgen(js_name = moneyAdd)]
pub fn money_add(a: &str, b: &str, currency: &str) -> JsResult<String> {
    Ok(money(a, currency)?
        .checked_add(&money(b, currency)?)
        .js()?
        .amount_string())
}

/// `a - b` in `currency` (may be negative).
#[wasm_bindgen(js_name = moneySub)]
pub fn money_sub(a: &str, b: &str, currency: &str) -> JsResult<String> {
    Ok(money(a, currency)?
        .checked_sub(&money(b, currency)?)
        .js()?
        .amount_string())
}

/// Splits `amount` by integer weights so the parts sum exactly to it (the odd minor
/// units go to the largest remainders, ties to the earlier part).
#[wasm_bindgen(js_name = moneyAllocate, unchecked_return_type = "string[]")]
pub fn money_allocate(
    amount: &str,
    currency: &str,
    #[wasm_bindgen(unchecked_param_type = "number[]")] weights: JsValue,
) -> JsResult<JsValue> {
    let weights = items(&weights, JsValue::as_f64)
        .ok_or_else(|| js_error("invalid_split", "weights must be an array of numbers"))?;
    let weights = weights
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            whole(w).ok_or_else(|| {
                js_error(
                    "invalid_split",
                    &format!(
                        "invalid split: weight #{i} ({}) is not a whole number >= 0",
                        number_text(w)
                    ),
                )
            })
        })
        .collect::<JsResult<Vec<u64>>>()?;
    let parts = money(amount, currency)?.allocate(&weights).js()?;
    to_value(&parts.iter().map(Money::amount_string).collect::<Vec<_>>())
}

/// `bps` basis points of `amount` (1 bp = 0.01 %), rounded half away from zero to
/// the currency's minor unit.
#[wasm_bindgen(js_name = moneyBps)]
pub fn money_bps(amount: &str, currency: &str, bps: f64) -> JsResult<String> {
    // A JS number is checked, not wrapped: -1 is not 4294967295 basis points.
    let bps = whole(bps)
        .and_then(|b| u32::try_from(b).ok())
        .ok_or_else(|| {
            js_error(
                "invalid_input",
                &format!(
                    "bps must be a whole number from 0 to {}, got {}",
                    u32::MAX,
                    number_text(bps)
                ),
            )
        })?;
    Ok(money(amount, currency)?.bps(bps).js()?.amount_string())
}

/// The amount at the currency's scale followed by the code, e.g. `"1500.00 USD"`;
/// throws `invalid_amount_scale` for more decimals than the currency has.
#[wasm_bindgen(js_name = formatMoney)]
pub fn format_money(amount: &str, currency: &str) -> JsResult<String> {
    Ok(money(amount, currency)?.to_string())
}
