//! A tiny HTTP client for the trustfold API and the earnest-money scenario driven
//! through it. Shared by the HTTP tests and `examples/earnest_money_http.rs`.

#![allow(dead_code)]

use serde_json::{json, Value};

/// The earnest-money policy shipped in `examples/policies`.
pub const EARNEST_MONEY: &str = include_str!("../../../examples/policies/earnest-money.json");

/// One response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub bytes: Vec<u8>,
    pub body: Value,
}

/// One answer a client got: method, path, status and JSON body (`Null` if none).
pub type Seen = (String, String, u16, Value);

/// A client for one server. Clones share `seen`: every answer's method, path and status,
/// checked against `/openapi.json` when a test's server finishes.
#[derive(Clone, Debug)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl Client {
    pub fn new(base: impl Into<String>) -> Self {
        Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("http client"),
            base: base.into(),
            seen: Default::default(),
        }
    }

    /// The answers this client (and its clones) got whose status `/openapi.json` does
    /// not document for their operation, or whose JSON body does not fit the schema it
    /// documents for that status (routes and methods it does not list are the route
    /// test's business, and 5xx each test's own).
    pub fn undocumented(&self) -> Vec<String> {
        let doc: Value =
            serde_json::from_str(include_str!("../../src/openapi.json")).expect("openapi.json");
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let mut out = Vec::new();
        // A response given as `{"$ref": "#/components/responses/…"}`, resolved.
        let resolve = |r: &Value| -> Value {
            match r["$ref"].as_str() {
                Some(to) => {
                    let name = to.trim_start_matches("#/components/responses/");
                    doc["components"]["responses"][name].clone()
                }
                None => r.clone(),
            }
        };
        for (method, path, status, body) in seen {
            let path = path.split('?').next().unwrap_or_default();
            let op = paths
                .iter()
                .find(|(template, _)| template_matches(template, path))
                .map(|(_, ops)| ops.get(method.to_lowercase()));
            // The router's own answers, for a path the document does not list (404
            // `route_not_found`) or a method it does not list for a path (405): they
            // are documented once, in `components.responses`.
            let fallback = match (op, status) {
                (None, 404) => Some("RouteNotFound"),
                (Some(None), 405) => Some("MethodNotAllowed"),
                _ => None,
            };
            if let Some(name) = fallback {
                let response = &doc["components"]["responses"][name];
                let schema = &response["content"]["application/problem+json"]["schema"];
                let line = match fits(&doc, schema, &body, "body") {
                    _ if response.is_null() => format!(
                        "{method} {path} answered {status}, not in components.responses.{name}"
                    ),
                    Err(e) => format!("{method} {path} answered {status} with {e}"),
                    Ok(()) => continue,
                };
                if !out.contains(&line) {
                    out.push(line);
                }
                continue;
            }
            let Some(Some(op)) = op else {
                continue;
            };
            if status >= 500 {
                continue;
            }
            let responses = &op["responses"];
            let Some(response) = responses
                .get(status.to_string())
                .or_else(|| responses.get("default"))
                .map(resolve)
            else {
                let line = format!("{method} {path} answered {status}");
                if !out.contains(&line) {
                    out.push(line);
                }
                continue;
            };
            let schema = response["content"]
                .as_object()
                .and_then(|c| c.iter().find(|(t, _)| t.ends_with("json")))
                .map(|(_, c)| &c["schema"]);
            if let (Some(schema), false) = (schema, body.is_null()) {
                if let Err(e) = fits(&doc, schema, &body, "body") {
                    let line = format!("{method} {path} answered {status} with {e}");
                    if !out.contains(&line) {
                        out.push(line);
                    }
                }
            }
        }
        out
    }

    /// Sends a request with an optional bearer credential, extra headers and raw body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply, reqwest::Error> {
        let name = method.to_owned();
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                req = req.header("content-type", "application/json");
            }
            req = req.body(b);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await?.to_vec();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((name, path.to_owned(), status, body.clone()));
        }
        Ok(Reply {
            status,
            headers,
            bytes,
            body,
        })
    }

    pub async fn get(&self, path: &str, auth: &str) -> Reply {
        self.raw("GET", path, Some(auth), &[], None)
            .await
            .expect("GET")
    }

    pub async fn post(&self, path: &str, auth: &str, body: &Value) -> Reply {
        self.raw(
            "POST",
            path,
            Some(auth),
            &[],
            Some(body.to_string().into_bytes()),
        )
        .await
        .expect("POST")
    }

    pub async fn post_idem(&self, path: &str, auth: &str, key: &str, body: &Value) -> Reply {
        self.post_bytes_idem(path, auth, key, body.to_string().into_bytes())
            .await
    }

    /// POSTs `body` byte for byte (malformed or oddly laid out JSON) with an
    /// `Idempotency-Key`.
    pub async fn post_bytes_idem(&self, path: &str, auth: &str, key: &str, body: Vec<u8>) -> Reply {
        self.raw(
            "POST",
            path,
            Some(auth),
            &[("idempotency-key", key)],
            Some(body),
        )
        .await
        .expect("POST")
    }

    /// Creates a tenant with the admin token; returns its API key.
    pub async fn tenant(&self, admin: &str, name: &str) -> Result<String, String> {
        let r = self
            .post("/v1/tenants", admin, &json!({ "name": name }))
            .await;
        if r.status != 201 {
            return Err(format!("create tenant: {} {}", r.status, r.body));
        }
        Ok(r.body["api_key"].as_str().unwrap_or_default().to_owned())
    }

    /// Mints a participant token for `party` on `payment` with the API key `key`.
    pub async fn participant_token(
        &self,
        key: &str,
        payment: &str,
        party: &str,
        ttl: u64,
    ) -> String {
        let t = self
            .post(
                &format!("/v1/payments/{payment}/tokens"),
                key,
                &json!({"party": party, "ttl_seconds": ttl}),
            )
            .await;
        assert_eq!(t.status, 201, "{}", t.body);
        t.body["token"].as_str().expect("token").to_owned()
    }

    /// Sends one command as `party` in `role`; `Err` unless it is accepted.
    pub async fn command(
        &self,
        key: &str,
        payment: &str,
        party: Option<&str>,
        role: &str,
        command: Value,
    ) -> Result<Reply, String> {
        let r = self
            .post(
                &format!("/v1/payments/{payment}/commands"),
                key,
                &json!({"command": command, "actor": {"party": party, "role": role}}),
            )
            .await;
        if r.status != 200 {
            return Err(format!(
                "command {} as {role}: {} {}",
                command["type"], r.status, r.body
            ));
        }
        Ok(r)
    }
}

/// The parties and payment of one earnest-money run.
#[derive(Debug, Clone)]
pub struct Flow {
    pub payment: String,
    pub agent: String,
    pub buyer: String,
    pub seller: String,
    pub escrow: String,
    pub request: String,
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Opens an earnest-money payment of 5,000 USD and invites and joins everyone.
pub async fn open_and_join(c: &Client, key: &str) -> Result<Flow, String> {
    let r = c
        .post(
            "/v1/policies",
            key,
            &serde_json::from_str(EARNEST_MONEY).map_err(|e| e.to_string())?,
        )
        .await;
    if r.status != 201 && r.status != 200 {
        return Err(format!("publish policy: {} {}", r.status, r.body));
    }
    let f = Flow {
        payment: String::new(),
        agent: id(),
        buyer: id(),
        seller: id(),
        escrow: id(),
        request: id(),
    };
    let r = c
        .post(
            "/v1/payments",
            key,
            &json!({
                "policy": "earnest-money",
                "amount": {"amount": "5000.00", "currency": "USD"},
                "description": "12 Elm St, earnest money",
                "initiator": {"party": f.agent, "roles": ["listing_agent"], "name": "Lee (listing agent)"}
            }),
        )
        .await;
    if r.status != 201 {
        return Err(format!("open payment: {} {}", r.status, r.body));
    }
    let f = Flow {
        payment: r.body["payment_id"].as_str().unwrap_or_default().to_owned(),
        ..f
    };
    let p = f.payment.as_str();
    for (party, role, name) in [
        (&f.buyer, "buyer", "Bo (buyer)"),
        (&f.seller, "seller", "Sam (seller)"),
        (&f.escrow, "escrow_holder", "Escrow Co"),
    ] {
        c.command(
            key,
            p,
            Some(&f.agent),
            "listing_agent",
            json!({"type": "Invite", "party": party, "roles": [role], "name": name}),
        )
        .await?;
    }
    for (party, role) in [
        (&f.buyer, "buyer"),
        (&f.seller, "seller"),
        (&f.escrow, "escrow_holder"),
    ] {
        c.command(key, p, Some(party), role, json!({"type": "Join"}))
            .await?;
    }
    Ok(f)
}

/// Both parties agree and the buyer's wire of 5,000 USD settles.
pub async fn fund(c: &Client, key: &str, f: &Flow) -> Result<(), String> {
    agree(c, key, f).await?;
    settle(c, key, f, "wire", "WIRE-1").await
}

/// Buyer and seller agree to the terms (the funding deadline is set).
pub async fn agree(c: &Client, key: &str, f: &Flow) -> Result<(), String> {
    let p = f.payment.as_str();
    let state = c.get(&format!("/v1/payments/{p}"), key).await;
    let terms = state.body["terms_hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (party, role) in [(&f.buyer, "buyer"), (&f.seller, "seller")] {
        c.command(
            key,
            p,
            Some(party),
            role,
            json!({"type": "AgreeToTerms", "terms_hash": terms}),
        )
        .await?;
    }
    Ok(())
}

/// The buyer's 5,000 USD on `rail` (`wire`, `ach`) under `rail_ref`, settled.
pub async fn settle(
    c: &Client,
    key: &str,
    f: &Flow,
    rail: &str,
    rail_ref: &str,
) -> Result<(), String> {
    let p = f.payment.as_str();
    c.command(key, p, Some(&f.buyer), "buyer", json!({"type": "AttachFundingMethod",
        "method": {"rail": rail, "institution": "First Bank", "account_last4": "4321", "holder": "Bo"}})).await?;
    c.command(
        key,
        p,
        Some(&f.buyer),
        "buyer",
        json!({"type": "SubmitFunding",
        "amount": {"amount": "5000.00", "currency": "USD"}, "rail": rail, "rail_ref": rail_ref}),
    )
    .await?;
    c.command(
        key,
        p,
        None,
        "rail",
        json!({"type": "RailNotice", "rail_ref": rail_ref,
        "notice": {"kind": "settled"}}),
    )
    .await?;
    Ok(())
}

/// Agrees, funds by wire, settles, releases to the seller with both approvals,
/// disburses and settles: the payment ends `Completed`.
pub async fn fund_and_release(c: &Client, key: &str, f: &Flow) -> Result<(), String> {
    fund(c, key, f).await?;
    let p = f.payment.as_str();
    let r = c.command(key, p, Some(&f.escrow), "escrow_holder", json!({"type": "RequestRelease",
        "request": f.request, "allocations": [{"party": f.seller, "amount": {"amount": "5000.00", "currency": "USD"}}]})).await?;
    let hash = r.body["state"]["requests"][&f.request]["allocations_hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (party, role) in [(&f.buyer, "buyer"), (&f.seller, "seller")] {
        c.command(
            key,
            p,
            Some(party),
            role,
            json!({"type": "Approve", "request": f.request,
            "allocations_hash": hash}),
        )
        .await?;
    }
    c.command(
        key,
        p,
        Some(&f.escrow),
        "escrow_holder",
        json!({"type": "SubmitDisbursement",
        "request": f.request, "rail": "wire", "rail_ref": "WIRE-OUT-1"}),
    )
    .await?;
    let r = c
        .command(
            key,
            p,
            None,
            "rail",
            json!({"type": "RailNotice", "rail_ref": "WIRE-OUT-1",
        "notice": {"kind": "settled"}}),
        )
        .await?;
    let status = r.body["state"]["status"].as_str().unwrap_or_default();
    if status != "Completed" {
        return Err(format!("expected Completed, the payment is {status}"));
    }
    Ok(())
}

/// Reads a payment's whole history through the paged events endpoint and returns it as
/// a history document (`[record,…]`) with the records' bytes exactly as served.
pub async fn history(c: &Client, key: &str, payment: &str, page: u32) -> Result<Vec<u8>, String> {
    let mut after = 0u64;
    let mut records: Vec<Vec<u8>> = Vec::new();
    loop {
        let r = c
            .get(
                &format!("/v1/payments/{payment}/events?after={after}&limit={page}"),
                key,
            )
            .await;
        if r.status != 200 {
            return Err(format!("events: {} {}", r.status, r.body));
        }
        // Cut the records out of the raw bytes: they must be served verbatim.
        let raw: &serde_json::value::RawValue = serde_json::from_slice::<Page>(&r.bytes)
            .map_err(|e| e.to_string())?
            .events;
        let list: Vec<&serde_json::value::RawValue> =
            serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
        records.extend(list.iter().map(|v| v.get().as_bytes().to_vec()));
        if !r.body["has_more"].as_bool().unwrap_or(false) {
            break;
        }
        after = r.body["next"].as_u64().unwrap_or(0);
    }
    let mut out = b"[".to_vec();
    for (i, rec) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(rec);
    }
    out.push(b']');
    Ok(out)
}

#[derive(serde::Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    events: &'a serde_json::value::RawValue,
}

/// Whether `path` is an instance of the OpenAPI path `template` (`{name}` matches one
/// non-empty segment).
fn template_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if t.starts_with('{') && t.ends_with('}') {
                !p.is_empty()
            } else {
                t == p
            }
        })
}

/// Whether `value` fits the OpenAPI `schema` (the parts this document uses: `$ref`,
/// `type` (one or a list), `required`, `properties`, `items`, `oneOf`/`anyOf`, `enum`);
/// else where and why not.
fn fits(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return fits(doc, &doc["components"]["schemas"][name], value, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let fitting = options
                .iter()
                .filter(|s| fits(doc, s, value, at).is_ok())
                .count();
            let ok = if key == "oneOf" {
                fitting == 1
            } else {
                fitting >= 1
            };
            if !ok {
                return Err(format!("{at}: fits {fitting} of the {key} schemas"));
            }
        }
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let fitting = allowed.is_empty()
        || allowed.contains(&kind)
        || (kind == "integer" && allowed.contains(&"number"));
    if !fitting {
        return Err(format!("{at}: a {kind}, not {allowed:?}"));
    }
    if let Value::Object(members) = value {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            if !members.contains_key(name) {
                return Err(format!("{at}: no `{name}`"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, s) in props {
                if let Some(v) = members.get(name) {
                    fits(doc, s, v, &format!("{at}.{name}"))?;
                }
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            fits(doc, s, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}
