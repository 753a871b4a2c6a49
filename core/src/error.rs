//! The one error enum of the core.
//!
//! Every failure has a stable machine-readable [`Error::code`] (the same codes are
//! used by the HTTP API and the JS SDK) and a short lower-case message that names
//! the field or rule and, where there is one, the fix.

use crate::money::Currency;
use crate::policy::Role;

/// Everything that can go wrong in the core: bad input, a broken domain rule,
/// or a history that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- input -------------------------------------------------------------
    /// JSON that does not parse or does not have the expected shape.
    #[error("malformed json: {0}")]
    MalformedJson(String),
    /// An event type this version of trustfold does not know.
    #[error("unknown event type `{0}`")]
    UnknownEventType(String),
    /// An event schema version newer than this build, or one without an upcaster.
    #[error("unsupported schema version {version} for event type `{event_type}`")]
    UnsupportedSchemaVersion {
        /// The event type.
        event_type: String,
        /// The version found.
        version: u16,
    },
    /// A currency code that is not ISO 4217 (or not supported).
    #[error("unknown currency `{0}`: use an ISO 4217 code such as USD")]
    UnknownCurrency(String),
    /// An amount string that is not a decimal number.
    #[error("invalid amount `{0}`: use a decimal string such as \"1500.00\"")]
    InvalidAmount(String),
    /// More decimals than the currency has minor units.
    #[error("amount {amount} has more decimals than {currency} allows ({minor_units})")]
    InvalidAmountScale {
        /// The amount as given.
        amount: String,
        /// The currency.
        currency: Currency,
        /// The currency's minor units.
        minor_units: u32,
    },
    /// Zero or negative where a positive amount is required.
    #[error("amount must be positive, got {0}")]
    NonPositiveAmount(String),
    /// Arithmetic or comparison across currencies.
    #[error("currency mismatch: expected {expected}, got {found}")]
    CurrencyMismatch {
        /// The payment's currency.
        expected: Currency,
        /// The currency given.
        found: Currency,
    },
    /// An amount too large to compute with.
    #[error(
        "amount overflow: an amount holds at most 79228162514264337593543950335 minor units \
         of its currency"
    )]
    Overflow,
    /// A timestamp that is not RFC 3339.
    #[error("invalid timestamp `{0}`: use RFC 3339 UTC such as 2026-11-26T05:35:15Z")]
    InvalidTimestamp(String),
    /// A calendar date that is not `YYYY-MM-DD`.
    #[error("invalid date `{0}`: use YYYY-MM-DD, such as 2026-12-25")]
    InvalidDate(String),
    /// An id that is not a UUID.
    #[error("invalid id `{0}`: expected a UUID")]
    InvalidId(String),
    /// A split whose weights are unusable.
    #[error("invalid split: {0}")]
    InvalidSplit(String),
    /// A policy document that fails validation; `field` is a JSON path.
    #[error("invalid policy at `{field}`: {reason}")]
    InvalidPolicy {
        /// Where in the document, e.g. `release.approvals.n_of.n`.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A hex string that is not 32 bytes of hex.
    #[error("invalid hash `{0}`: expected 64 hex digits")]
    InvalidHash(String),
    /// A public key or signature in the wrong encoding.
    #[error("invalid key or signature: {0}")]
    InvalidKey(String),

    /// Input rejected while parsing JSON, with the stable code of the underlying
    /// error (e.g. `invalid_amount_scale` inside an event payload).
    #[error("{message}")]
    InvalidInput {
        /// Stable code.
        code: &'static str,
        /// Message, with the JSON position where known.
        message: String,
    },

    // ---- domain rules (decide) --------------------------------------------
    /// A domain rule rejected the command. `code` names the rule.
    #[error("{message}")]
    Rejected {
        /// Stable code, e.g. `quorum_not_met`, `insufficient_funds`.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
    },

    /// A command's text longer than a history keeps (`text_too_long`).
    #[error("`{field}` is {chars} characters long; at most {max} are allowed")]
    TextTooLong {
        /// The field, e.g. `reason`.
        field: &'static str,
        /// Its length in characters.
        chars: usize,
        /// The most allowed.
        max: usize,
    },
    /// A command's text holding a character a history does not keep (`invalid_text`):
    /// a control character (Unicode `Cc`; line breaks and tabs are allowed in
    /// descriptions, reasons and notes only) or a bidirectional embedding, override or
    /// isolate control (U+202A–U+202E, U+2066–U+2069).
    #[error(
        "`{field}` contains {} U+{:04X} at character {at}: remove it{}",
        char_kind(*.ch),
        u32::from(*.ch),
        char_hint(*.ch)
    )]
    InvalidText {
        /// The field, e.g. `name`.
        field: &'static str,
        /// The character refused.
        ch: char,
        /// Its position in the field, in characters from 1.
        at: usize,
    },
    /// A command's role list naming a role more than once (`duplicate_role`).
    #[error("role `{}` is listed more than once in `roles`: list each role once", echo(.role.as_str()))]
    DuplicateRole {
        /// The role listed again.
        role: Role,
    },

    // ---- histories (fold and verify) ----------------------------------------
    /// The history is not a valid sequence of events for one payment.
    #[error("invalid history at seq {seq}: {reason}")]
    InvalidHistory {
        /// The first offending sequence number (1-based).
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The hash chain is broken at `seq`.
    #[error("hash chain broken at seq {seq}: {reason}")]
    ChainBroken {
        /// The first offending sequence number (1-based).
        seq: u64,
        /// What is wrong: altered, removed, inserted or reordered event.
        reason: String,
    },
    /// A signed head whose signature does not verify with the given key.
    #[error("signed head does not verify: {0}")]
    BadSignature(String),
}

impl Error {
    /// The stable machine-readable code of this error.
    ///
    /// ```
    /// use trustfold_core::Error;
    /// assert_eq!(Error::Overflow.code(), "amount_overflow");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Error::MalformedJson(_) => "malformed_json",
            Error::UnknownEventType(_) => "unknown_event_type",
            Error::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            Error::UnknownCurrency(_) => "unknown_currency",
            Error::InvalidAmount(_) => "invalid_amount",
            Error::InvalidAmountScale { .. } => "invalid_amount_scale",
            Error::NonPositiveAmount(_) => "non_positive_amount",
            Error::CurrencyMismatch { .. } => "currency_mismatch",
            Error::Overflow => "amount_overflow",
            Error::InvalidTimestamp(_) => "invalid_timestamp",
            Error::InvalidDate(_) => "invalid_date",
            Error::InvalidId(_) => "invalid_id",
            Error::InvalidSplit(_) => "invalid_split",
            Error::InvalidPolicy { .. } => "invalid_policy",
            Error::InvalidHash(_) => "invalid_hash",
            Error::InvalidKey(_) => "invalid_key",
            Error::InvalidInput { code, .. } => code,
            Error::Rejected { code, .. } => code,
            Error::TextTooLong { .. } => "text_too_long",
            Error::InvalidText { .. } => "invalid_text",
            Error::DuplicateRole { .. } => "duplicate_role",
            Error::InvalidHistory { .. } => "invalid_history",
            Error::ChainBroken { .. } => "chain_broken",
            Error::BadSignature(_) => "bad_signature",
        }
    }

    /// True when the command was refused because of who is acting (HTTP 403), not
    /// because of what it asks (422).
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            Error::Rejected {
                code: "not_permitted"
                    | "unknown_participant"
                    | "actor_required"
                    | "not_joined"
                    | "not_an_approver",
                ..
            }
        )
    }

    /// The event (sequence number, from 1) at which a history failed, where one applies.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Error::InvalidHistory { seq, .. } | Error::ChainBroken { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// The offending field, where one applies (a JSON path).
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::InvalidPolicy { field, .. } => Some(field),
            Error::TextTooLong { field, .. } | Error::InvalidText { field, .. } => Some(field),
            Error::DuplicateRole { .. } => Some("roles"),
            _ => None,
        }
    }

    pub(crate) fn rejected(code: &'static str, message: impl Into<String>) -> Self {
        Error::Rejected {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn policy(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidPolicy {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn history(seq: u64, reason: impl Into<String>) -> Self {
        Error::InvalidHistory {
            seq,
            reason: reason.into(),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        // Our own deserializers report errors through serde's `custom` as
        // "<code>: <message>"; keep the code so callers see e.g. invalid_amount_scale.
        let msg = e.to_string();
        if let Some((code, rest)) = msg.split_once(": ") {
            if let Some(code) = INPUT_CODES.iter().find(|c| **c == code) {
                return Error::InvalidInput {
                    code,
                    message: rest.to_string(),
                };
            }
        }
        Error::MalformedJson(msg)
    }
}

/// Codes that survive a trip through serde's custom errors.
pub(crate) const INPUT_CODES: &[&str] = &[
    "unknown_event_type",
    "unsupported_schema_version",
    "unknown_currency",
    "invalid_amount",
    "invalid_amount_scale",
    "non_positive_amount",
    "currency_mismatch",
    "amount_overflow",
    "invalid_timestamp",
    "invalid_date",
    "invalid_id",
    "invalid_hash",
    "invalid_policy",
];

/// What kind of character [`Error::InvalidText`] refused.
fn char_kind(c: char) -> &'static str {
    if c.is_control() {
        "the control character"
    } else {
        "the bidirectional control character"
    }
}

/// Where a refused line break or tab would have been allowed.
fn char_hint(c: char) -> &'static str {
    match c {
        '\n' | '\r' | '\t' => {
            " (line breaks and tabs are allowed only in descriptions, reasons and notes)"
        }
        _ => "",
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Input quoted in an error message: at most 64 characters, then `…` (a message never
/// carries a megabyte of someone's input back).
///
/// ```
/// use trustfold_core::error::echo;
/// assert_eq!(echo("USD"), "USD");
/// assert_eq!(echo(&"x".repeat(100)), format!("{}…", "x".repeat(64)));
/// ```
pub fn echo(input: &str) -> String {
    clip(input, 64)
}

/// `text` cut to `max` characters, then `…` when anything was cut.
///
/// ```
/// use trustfold_core::error::clip;
/// assert_eq!(clip("short", 500), "short");
/// assert_eq!(clip("ééé", 2), "éé…");
/// ```
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
