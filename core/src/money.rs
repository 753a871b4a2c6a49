//! Money: exact decimal amounts in an ISO 4217 currency, and splits that sum to the whole.
//!
//! An amount never has more decimals than its currency's minor units (`1.005 USD`
//! is an error, not a rounding) and is written in JSON as a string with exactly the
//! currency's minor units: `{"amount":"1500.00","currency":"USD"}`.
//!
//! ```
//! use trustfold_core::money::{Currency, Money};
//! let usd = Currency::new("USD")?;
//! let deposit = Money::parse("5000", usd)?;
//! assert_eq!(deposit.to_string(), "5000.00 USD");
//! assert!(Money::parse("1.005", usd).is_err());
//! // 3-way split: the odd cent goes to the first part.
//! let parts = Money::parse("100.00", usd)?.allocate(&[1, 1, 1])?;
//! assert_eq!(parts.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
//!            ["33.34 USD", "33.33 USD", "33.33 USD"]);
//! # Ok::<(), trustfold_core::Error>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// An ISO 4217 currency code with its number of minor units.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    minor_units: u8,
}

/// Supported currencies and their minor units (ISO 4217).
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("LYD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UGX", 0),
    ("USD", 2),
    ("VND", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("ZAR", 2),
];

impl Currency {
    /// Looks up an ISO 4217 code (upper case).
    ///
    /// ```
    /// use trustfold_core::money::Currency;
    /// assert_eq!(Currency::new("KWD")?.minor_units(), 3);
    /// assert_eq!(Currency::new("usd").unwrap_err().code(), "unknown_currency");
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn new(code: &str) -> Result<Self> {
        match CURRENCIES.binary_search_by(|(c, _)| (*c).cmp(code)) {
            Ok(i) => {
                let (c, minor_units) = CURRENCIES[i];
                let b = c.as_bytes();
                Ok(Currency {
                    code: [b[0], b[1], b[2]],
                    minor_units,
                })
            }
            Err(_) => Err(Error::UnknownCurrency(crate::error::echo(code))),
        }
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        // The code bytes always come from the ASCII table above.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Digits after the decimal point (USD 2, JPY 0, KWD 3).
    pub fn minor_units(&self) -> u32 {
        u32::from(self.minor_units)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Currency::new(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Cow<'de, str> = Cow::deserialize(d)?;
        Currency::new(&s).map_err(|e| D::Error::custom(tagged(&e)))
    }
}

/// Formats an error so that its code survives a trip through serde's custom errors.
pub(crate) fn tagged(e: &Error) -> String {
    format!("{}: {}", e.code(), e)
}

/// Parses a decimal string strictly: digits with an optional sign and one point.
/// A decimal written as JSON writes numbers: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, at most 40
/// characters (no `+`, no leading zeros, no bare `.`), so one amount has one spelling.
pub(crate) fn parse_decimal(s: &str) -> Result<Decimal> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let ok = s.len() <= 40
        && all_digits(int)
        && (int == "0" || !int.starts_with('0'))
        && frac.is_none_or(all_digits);
    if !ok {
        return Err(Error::InvalidAmount(crate::error::echo(s)));
    }
    Decimal::from_str_exact(s).map_err(|_| {
        // Well written but beyond 96 bits at its scale: too large an amount (more
        // than 28 decimals is no amount of any currency either way).
        if frac.is_some_and(|f| f.len() > 28) {
            Error::InvalidAmount(crate::error::echo(s))
        } else {
            Error::Overflow
        }
    })
}

/// An exact amount of one currency. Always kept at the currency's scale.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// Parses a decimal string; rejects more decimals than the currency allows.
    /// Zero and negative amounts parse (balances need them); commands check positivity.
    pub fn parse(amount: &str, currency: Currency) -> Result<Self> {
        let d = parse_decimal(amount)?;
        Money::from_decimal(d, currency).map_err(|e| match e {
            Error::InvalidAmountScale {
                currency,
                minor_units,
                ..
            } => Error::InvalidAmountScale {
                amount: amount.to_string(),
                currency,
                minor_units,
            },
            other => other,
        })
    }

    /// Wraps a decimal; rejects more decimals than the currency allows.
    pub fn from_decimal(amount: Decimal, currency: Currency) -> Result<Self> {
        let mut n = amount.normalize();
        if n.scale() > currency.minor_units() {
            return Err(Error::InvalidAmountScale {
                amount: amount.to_string(),
                currency,
                minor_units: currency.minor_units(),
            });
        }
        n.rescale(currency.minor_units());
        Money::at_scale(n, currency)
    }

    /// `amount` as money if it is at the currency's scale. `rust_decimal` keeps a
    /// result whose digits do not fit its 96 bits by dropping decimals (rounding), and
    /// `rescale` does not add decimals that would not fit: either is an overflow here,
    /// never a quietly different amount.
    fn at_scale(amount: Decimal, currency: Currency) -> Result<Money> {
        if amount.scale() != currency.minor_units() {
            return Err(Error::Overflow);
        }
        Ok(Money { amount, currency })
    }

    /// Zero in `currency`.
    pub fn zero(currency: Currency) -> Self {
        // Zero at the currency's scale (what `rescale` of `ZERO` gives, without its
        // arithmetic); minor units are at most 4, far below the 28 allowed.
        let amount = Decimal::from_parts(0, 0, 0, false, currency.minor_units());
        Money { amount, currency }
    }

    /// The decimal amount.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// True when strictly greater than zero.
    pub fn is_positive(&self) -> bool {
        self.amount > Decimal::ZERO
    }

    /// True when zero.
    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }

    /// Errors unless strictly positive.
    pub fn require_positive(self) -> Result<Self> {
        if self.is_positive() {
            Ok(self)
        } else {
            Err(Error::NonPositiveAmount(self.amount.to_string()))
        }
    }

    /// Errors unless `other` has the same currency.
    pub fn same_currency(&self, other: &Money) -> Result<()> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(Error::CurrencyMismatch {
                expected: self.currency,
                found: other.currency,
            })
        }
    }

    /// `self + other`, same currency only.
    ///
    /// ```
    /// use trustfold_core::money::{Currency, Money};
    /// let usd = Currency::new("USD")?;
    /// let eur = Currency::new("EUR")?;
    /// let a = Money::parse("1.10", usd)?;
    /// assert_eq!(a.checked_add(&a)?.to_string(), "2.20 USD");
    /// assert_eq!(a.checked_add(&Money::parse("1", eur)?).unwrap_err().code(), "currency_mismatch");
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn checked_add(&self, other: &Money) -> Result<Money> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(Error::Overflow)?;
        Money::at_scale(amount, self.currency)
    }

    /// `self - other`, same currency only (may go negative).
    pub fn checked_sub(&self, other: &Money) -> Result<Money> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_sub(other.amount)
            .ok_or(Error::Overflow)?;
        Money::at_scale(amount, self.currency)
    }

    /// The negated amount.
    pub fn neg(&self) -> Money {
        Money {
            amount: -self.amount,
            currency: self.currency,
        }
    }

    /// Basis points of this amount (1 bp = 0.01 %), rounded to the currency's minor
    /// unit, half away from zero (`0.005 USD` becomes `0.01 USD`).
    ///
    /// ```
    /// use trustfold_core::money::{Currency, Money};
    /// let usd = Currency::new("USD")?;
    /// assert_eq!(Money::parse("1000.05", usd)?.bps(1000)?.to_string(), "100.01 USD");
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn bps(&self, bps: u32) -> Result<Money> {
        // In whole minor units (the mantissa at the currency's scale) and 128-bit
        // integers: exact for every amount, where a decimal product of more than 28
        // digits would be rounded before the division (off by a minor unit).
        let minor = self.amount.mantissa();
        let product = minor.checked_mul(i128::from(bps)).ok_or(Error::Overflow)?;
        let (mut q, r) = (product / 10_000, product % 10_000);
        if r.unsigned_abs() * 2 >= 10_000 {
            q += product.signum();
        }
        let amount = Decimal::try_from_i128_with_scale(q, self.currency.minor_units())
            .map_err(|_| Error::Overflow)?;
        Money::at_scale(amount, self.currency)
    }

    /// Splits this amount by integer weights so the parts sum exactly to the whole
    /// (largest remainder method at the minor unit). Leftover minor units go one each
    /// to the parts with the largest remainders; ties go to the earlier part, so the
    /// first listed party gets the odd cent.
    pub fn allocate(&self, weights: &[u64]) -> Result<Vec<Money>> {
        if weights.is_empty() {
            return Err(Error::InvalidSplit("no parts to split into".into()));
        }
        let total_w: u128 = weights.iter().map(|w| u128::from(*w)).sum();
        if total_w == 0 {
            return Err(Error::InvalidSplit("weights sum to zero".into()));
        }
        let scale = self.currency.minor_units();
        let minor = self.amount.mantissa(); // at our scale, mantissa = minor units
        if minor < 0 {
            return Err(Error::NonPositiveAmount(self.amount.to_string()));
        }
        let minor = minor as u128;
        let mut parts: Vec<u128> = Vec::with_capacity(weights.len());
        let mut rems: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
        for (i, w) in weights.iter().enumerate() {
            let num = minor.checked_mul(u128::from(*w)).ok_or(Error::Overflow)?;
            parts.push(num / total_w);
            rems.push((num % total_w, i));
        }
        let given: u128 = parts.iter().sum();
        let mut left = minor - given;
        // Largest remainder first; on ties the earlier index first.
        rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i) in rems {
            if left == 0 {
                break;
            }
            parts[i] += 1;
            left -= 1;
        }
        parts
            .into_iter()
            .map(|p| {
                let m = i128::try_from(p).map_err(|_| Error::Overflow)?;
                let amount =
                    Decimal::try_from_i128_with_scale(m, scale).map_err(|_| Error::Overflow)?;
                Ok(Money {
                    amount,
                    currency: self.currency,
                })
            })
            .collect()
    }

    /// The amount as a string at the currency's scale, e.g. `"1500.00"`.
    pub fn amount_string(&self) -> String {
        self.amount.to_string()
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

impl PartialOrd for Money {
    /// Amounts of different currencies are not comparable.
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        if self.currency == other.currency {
            Some(self.amount.cmp(&other.amount))
        } else {
            None
        }
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Money", 2)?;
        st.serialize_field("amount", &DecimalStr(&self.amount))?;
        st.serialize_field("currency", &self.currency)?;
        st.end()
    }
}

/// Serializes a decimal as its string form without allocating a `String` first.
pub(crate) struct DecimalStr<'a>(pub &'a Decimal);

impl Serialize for DecimalStr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw<'a> {
            #[serde(borrow)]
            amount: Cow<'a, str>,
            currency: Currency,
        }
        let raw = Raw::deserialize(d)?;
        Money::parse(&raw.amount, raw.currency).map_err(|e| D::Error::custom(tagged(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::new("USD").unwrap()
    }

    #[test]
    fn zero_is_zero_at_the_currency_scale() {
        for code in ["USD", "JPY", "KWD", "EUR", "CLF"] {
            let Ok(c) = Currency::new(code) else { continue };
            let mut want = Decimal::ZERO;
            want.rescale(c.minor_units());
            let z = Money::zero(c);
            assert_eq!(z.amount().scale(), want.scale(), "{code}");
            assert_eq!(z.amount().to_string(), want.to_string(), "{code}");
            assert!(!z.amount().is_sign_negative());
        }
    }

    /// Amounts whose minor units do not fit `rust_decimal`'s 96 bits are an overflow,
    /// never a quietly rescaled or rounded amount: parsed, summed or taken in bps.
    #[test]
    fn amounts_beyond_the_scale_are_overflows_not_other_amounts() {
        let usd = Currency::new("USD").expect("usd");
        let jpy = Currency::new("JPY").expect("jpy");
        // The largest USD amount: 2^96 - 1 minor units.
        let max = Money::parse("792281625142643375935439503.35", usd).expect("fits");
        assert_eq!(max.amount_string(), "792281625142643375935439503.35");
        for (text, currency) in [
            ("1000000000000000000000000000", usd),
            ("792281625142643375935439503.36", usd),
            ("79228162514264337593543950335", usd),
            ("79228162514264337593543950336", jpy),
        ] {
            let e = Money::parse(text, currency).unwrap_err();
            assert_eq!(e.code(), "amount_overflow", "{text} {currency}: {e}");
        }
        assert_eq!(
            Money::parse("79228162514264337593543950335", jpy)
                .expect("JPY has no minor unit")
                .amount_string(),
            "79228162514264337593543950335"
        );
        let cents = Money::parse("0.06", usd).expect("cents");
        assert_eq!(
            max.checked_add(&cents).unwrap_err().code(),
            "amount_overflow"
        );
        assert_eq!(
            max.neg().checked_sub(&cents).unwrap_err().code(),
            "amount_overflow"
        );
        assert_eq!(
            max.checked_sub(&cents).expect("fits").amount_string(),
            "792281625142643375935439503.29"
        );
        // Exact at every size: 100 % of the largest amount is itself, more overflows,
        // and a product of more than 28 digits rounds only once, at the minor unit.
        assert_eq!(max.bps(10_000).expect("all of it"), max);
        assert_eq!(max.bps(10_001).unwrap_err().code(), "amount_overflow");
        let large = Money::parse("88704223286582739515650.05", usd).expect("fits");
        assert_eq!(
            large.bps(9_999).expect("fits").amount_string(),
            "88695352864254081241698.48" // 8869535286425408124169848.4995 cents
        );
        assert_eq!(
            large.neg().bps(9_999).expect("fits").amount_string(),
            "-88695352864254081241698.48"
        );
        let big = Money::parse("792281625142643375935439.50", usd).expect("fits");
        assert_eq!(
            big.bps(5_000).expect("half").amount_string(),
            "396140812571321687967719.75"
        );
    }

    #[test]
    fn scale_rules() {
        let jpy = Currency::new("JPY").unwrap();
        let kwd = Currency::new("KWD").unwrap();
        assert_eq!(Money::parse("100", jpy).unwrap().to_string(), "100 JPY");
        assert_eq!(
            Money::parse("1.5", jpy).unwrap_err().code(),
            "invalid_amount_scale"
        );
        assert_eq!(Money::parse("1.005", kwd).unwrap().amount_string(), "1.005");
        assert_eq!(
            Money::parse("1.0050", usd()).unwrap_err().code(),
            "invalid_amount_scale"
        );
        // trailing zeros beyond the scale are not extra precision
        assert_eq!(
            Money::parse("1.000", usd()).unwrap().amount_string(),
            "1.00"
        );
        for bad in ["", "abc", "1e5", "1.2.3", "--1", " 1", "0x10", "."] {
            assert_eq!(
                Money::parse(bad, usd()).unwrap_err().code(),
                "invalid_amount",
                "{bad}"
            );
        }
    }

    #[test]
    fn json_round_trip_and_errors() {
        let m: Money = serde_json::from_str(r#"{"amount":"12.5","currency":"USD"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"amount":"12.50","currency":"USD"}"#
        );
        let e: Error = serde_json::from_str::<Money>(r#"{"amount":"1.005","currency":"USD"}"#)
            .unwrap_err()
            .into();
        assert_eq!(e.code(), "invalid_amount_scale");
        let e: Error = serde_json::from_str::<Money>(r#"{"amount":"1","currency":"XXX"}"#)
            .unwrap_err()
            .into();
        assert_eq!(e.code(), "unknown_currency");
        let e: Error = serde_json::from_str::<Money>(r#"{"amount":1,"currency":"USD"}"#)
            .unwrap_err()
            .into();
        assert_eq!(e.code(), "malformed_json");
    }

    #[test]
    fn allocation_sums_to_whole() {
        let m = Money::parse("0.05", usd()).unwrap();
        let parts = m.allocate(&[1, 1, 1]).unwrap();
        let s: Vec<String> = parts.iter().map(|p| p.amount_string()).collect();
        assert_eq!(s, ["0.02", "0.02", "0.01"]);
        let parts = Money::parse("10.00", usd())
            .unwrap()
            .allocate(&[9000, 1000])
            .unwrap();
        assert_eq!(parts[0].amount_string(), "9.00");
        assert_eq!(parts[1].amount_string(), "1.00");
        assert!(m.allocate(&[]).is_err());
        assert!(m.allocate(&[0, 0]).is_err());
    }

    #[test]
    fn currency_table_is_sorted() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
