//! The earnest-money scenario over HTTP against a running trustfold-server.
//!
//! ```text
//! TRUSTFOLD_ADMIN_TOKEN=demo trustfold-server &
//! TRUSTFOLD_URL=http://127.0.0.1:8080 TRUSTFOLD_ADMIN_TOKEN=demo \
//!     cargo run -p trustfold-server --example earnest_money_http
//! ```
//!
//! Creates a tenant, publishes the earnest-money policy, opens a 5,000 USD payment,
//! invites and joins buyer, seller and escrow holder, agrees, funds by wire, settles,
//! releases to the seller with both approvals, disburses, then fetches the history,
//! verifies it and the signed head offline, and prints where to look.

#[path = "../tests/common/scenario.rs"]
mod scenario;

use std::process::ExitCode;

use scenario::{fund_and_release, history, open_and_join, Client};
use trustfold_core::history::{parse, PublicKey, SignedHead};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("earnest_money_http: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let base = std::env::var("TRUSTFOLD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let admin = std::env::var("TRUSTFOLD_ADMIN_TOKEN")
        .map_err(|_| "set TRUSTFOLD_ADMIN_TOKEN to the server's admin token".to_string())?;
    let c = Client::new(base.clone());
    // Wait for the server (it may have been started a moment ago).
    let mut up = false;
    for _ in 0..100 {
        if c.raw("GET", "/healthz", None, &[], None)
            .await
            .is_ok_and(|r| r.status == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if !up {
        return Err(format!("no trustfold-server answers at {base}"));
    }
    let key = c.tenant(&admin, "Demo Realty").await?;
    println!("tenant created; API key {}…", &key[..12]);
    let f = open_and_join(&c, &key).await?;
    println!(
        "payment {} opened; buyer, seller and escrow holder joined",
        f.payment
    );
    fund_and_release(&c, &key, &f).await?;
    println!("funded by wire, released to the seller with both approvals, disbursed: Completed");

    let doc = history(&c, &key, &f.payment, 100).await?;
    let state = trustfold_core::fold::replay(&doc).map_err(|e| e.to_string())?;
    let head = c
        .get(&format!("/v1/payments/{}/head", f.payment), &key)
        .await;
    let head: SignedHead = serde_json::from_value(head.body).map_err(|e| e.to_string())?;
    let pk = c
        .raw("GET", "/v1/server-key", None, &[], None)
        .await
        .map_err(|e| e.to_string())?;
    let pk: PublicKey = pk.body["public_key"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e: trustfold_core::Error| e.to_string())?;
    let records = parse(&doc).map_err(|e| e.to_string())?;
    head.verify_against(&pk, &records)
        .map_err(|e| e.to_string())?;
    println!(
        "history: {} events, hash chain verified, folded to {:?}; head signed by {pk} verified",
        state.version, state.status
    );
    println!();
    println!("where to look (Authorization: Bearer <the tenant's API key>):");
    for path in [
        format!("/v1/payments/{}", f.payment),
        format!("/v1/payments/{}/events", f.payment),
        format!("/v1/payments/{}/head", f.payment),
        format!("/v1/payments/{}/stream", f.payment),
        format!("/v1/payments/{}/balances", f.payment),
        format!("/v1/parties/{}/inbox", f.seller),
        "/v1/events".into(),
        "/openapi.json".into(),
    ] {
        println!("  {base}{path}");
    }
    Ok(())
}
