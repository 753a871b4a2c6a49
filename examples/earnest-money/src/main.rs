//! # earnest-money: the real-estate flow against a running trustfold server
//!
//! A Rust program that uses only the `trustfold` SDK crate to drive a brokered
//! earnest-money payment through a real server, step by step, then checks everything
//! a sceptical participant would:
//!
//! 1. creates a tenant (admin token), publishes the `earnest-money` policy
//!    (`examples/policies/earnest-money.json`), and opens a 5,000 USD payment as the
//!    listing agent;
//! 2. invites buyer, seller, escrow holder and lender, who join; buyer and seller
//!    agree to the terms;
//! 3. the buyer pays by ACH; the rail settles it, then **returns** it (R01,
//!    insufficient funds; the duplicate notice changes nothing); the buyer pays again
//!    by wire, whose settlement notice arrives **before** the transfer is recorded: the
//!    server holds it and applies it once the buyer's `SubmitFunding` is. The bank's
//!    notices name only the transfer's reference, as a bank's webhook would:
//!    `POST /v1/rail-notices` finds the payment;
//! 4. the escrow holder requests a **partial release** (2,000 USD to the seller); the
//!    lender may not approve; buyer and seller approve; the disbursement is submitted
//!    and settles; then the remaining 3,000 USD goes the same way, and the payment is
//!    `Completed`.
//!
//! Its client pins the server key, so every command's answer must carry the server's
//! signature for that very request. After every step it prints the payment's status
//! and escrow balance, read from a
//! local [`Replica`] that fetched the new events, checked their hash chain and the
//! server's signed head against the pinned server key, and folded them with the core.
//! At the end it compares the replica with the server's read model (no difference
//! allowed), exports the history as `trustfold fetch` writes it
//! (`OUT/earnest-money.history.json` and `OUT/earnest-money.history.json.head.json`,
//! with the key it trusted in `OUT/server-key.txt`; the demo tenant's API key is in
//! `OUT/api-key.txt`),
//! verifies that file offline with [`trustfold::verify`], shows that a copy with one
//! digit changed fails at the exact event, and prints the `trustfold verify` command
//! to check the file yourself. Any failure ends the program with a non-zero status.
//!
//! ## Run it
//!
//! `make demo` builds and starts a server on a fresh SQLite file and runs this. By
//! hand, from the repository root:
//!
//! ```text
//! cargo build --release -p trustfold-server -p earnest-money
//! (mkdir -p /tmp/tf && cd /tmp/tf && TRUSTFOLD_ADMIN_TOKEN=demo-admin \
//!     "$OLDPWD/target/release/trustfold-server" --listen 127.0.0.1:8080 \
//!     --database-url trustfold.db) &
//! TRUSTFOLD_URL=http://127.0.0.1:8080 TRUSTFOLD_ADMIN_TOKEN=demo-admin \
//!     target/release/earnest-money [--out-dir target/demo]
//! ```
//!
//! Environment:
//!
//! - `TRUSTFOLD_URL` — the server (default `http://127.0.0.1:8080`); the program
//!   waits up to 30 s for it to answer.
//! - `TRUSTFOLD_ADMIN_TOKEN` — the server's admin token (required: it creates a tenant).
//! - `TRUSTFOLD_SERVER_KEY` — the server's public key (64 hex digits), pinned out of
//!   band. Without it the key is taken from the server on first contact (and said so):
//!   fine for a demo, not for checking a server you do not run.
//! - `--out-dir DIR` (or `TRUSTFOLD_DEMO_OUT`) — where the export goes (default
//!   `target/demo`, relative to the current directory).

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use trustfold::client::{Client, CommandResult, HeldStatus, RailNoticeAnswer};
use trustfold::event::FundingMethod;
use trustfold::history::PublicKey;
use trustfold::id::derive;
use trustfold::ledger::Account;
use trustfold::prelude::*;
use trustfold::replica::Replica;
use trustfold::verify::Verifier;

/// The policy this example publishes.
const POLICY: &str = include_str!("../../policies/earnest-money.json");

type Res<T> = Result<T, Box<dyn StdError>>;

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("earnest-money: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nearnest-money: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the export goes: `--out-dir DIR`, else `TRUSTFOLD_DEMO_OUT`, else `target/demo`.
fn out_dir() -> Res<PathBuf> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out-dir" => dir = Some(args.next().ok_or("--out-dir needs a directory")?),
            "-h" | "--help" => {
                println!(
                    "usage: earnest-money [--out-dir DIR]\n\
                     env: TRUSTFOLD_URL, TRUSTFOLD_ADMIN_TOKEN (required), TRUSTFOLD_SERVER_KEY, TRUSTFOLD_DEMO_OUT"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    Ok(PathBuf::from(
        dir.or_else(|| std::env::var("TRUSTFOLD_DEMO_OUT").ok())
            .unwrap_or_else(|| "target/demo".into()),
    ))
}

/// Waits until the server answers its API (up to 30 s).
async fn wait_for(base: &str) -> Res<Client> {
    let probe = Client::new(base)?.backoff(Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match probe.server_key().await {
            Ok(_) => return Ok(Client::new(base)?),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no trustfold server answers at {base}: {e}").into())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The payment being driven, and the verified replica the steps are printed from.
struct Demo {
    client: Client,
    replica: Replica,
    payment: PaymentId,
    step: u32,
}

impl Demo {
    /// Sends one command (expecting the replica's version: nobody else writes) and
    /// prints the verified state after it.
    async fn run(&mut self, what: &str, actor: &Actor, command: &Command) -> Res<CommandResult> {
        self.step += 1;
        let res = self
            .client
            .send_command(
                self.payment,
                &serde_json::to_value(command)?,
                Some(&serde_json::to_value(actor)?),
                Some(self.replica.version()),
                None,
            )
            .await
            .map_err(|e| format!("step {} ({what}): {e} [{}]", self.step, e.code()))?;
        self.sync(what, &res).await?;
        Ok(res)
    }

    /// A bank's notice about a transfer, as its webhook handler would forward it: by the
    /// transfer's reference only (`POST /v1/rail-notices`; the server finds the payment).
    /// A notice no payment can take yet (its transfer is not recorded) is held by the
    /// server: its id is returned.
    async fn bank(
        &mut self,
        what: &str,
        rail_ref: &str,
        notice: RailOutcome,
    ) -> Res<Option<uuid::Uuid>> {
        self.step += 1;
        let res = self
            .client
            .rail_notice(rail_ref, &serde_json::to_value(notice)?, None)
            .await
            .map_err(|e| format!("step {} ({what}): {e} [{}]", self.step, e.code()))?;
        match res {
            RailNoticeAnswer::Applied(res) => {
                self.sync(what, &res).await?;
                Ok(None)
            }
            RailNoticeAnswer::Held(h) => {
                println!(
                    "{:>2}. {what:<62} -> held by the server: no payment recorded {} yet",
                    self.step, h.rail_ref
                );
                Ok(Some(h.id))
            }
        }
    }

    /// Waits (up to 10 s) for the server to give a held notice to the payment that
    /// recorded its transfer, then catches the replica up.
    async fn held_applied(&mut self, what: &str, id: uuid::Uuid) -> Res<()> {
        self.step += 1;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let held = loop {
            let h = self.client.held_rail_notice(id).await?;
            if !h.status.is_waiting() || std::time::Instant::now() > deadline {
                break h;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        if held.status != HeldStatus::Applied {
            return Err(format!(
                "step {} ({what}): the held notice is {:?} ({:?})",
                self.step, held.status, held.refusal
            )
            .into());
        }
        self.replica.sync().await?;
        let s = self.replica.state().ok_or("the replica holds no event")?;
        println!(
            "{:>2}. {what:<62} -> {:<17} v{:<3} escrow {:>8} (available {:>8})  [held notice applied]",
            self.step,
            s.status.as_str(),
            s.version,
            s.ledger.balance(&Account::Escrow).posted.amount_string(),
            s.ledger.balance(&Account::Escrow).available().amount_string(),
        );
        Ok(())
    }

    /// Sends a command the policy must refuse, and prints the refusal.
    async fn refuse(&mut self, what: &str, actor: &Actor, command: &Command) -> Res<()> {
        self.step += 1;
        let sent = self
            .client
            .send_command(
                self.payment,
                &serde_json::to_value(command)?,
                Some(&serde_json::to_value(actor)?),
                None,
                None,
            )
            .await;
        match sent {
            Ok(_) => Err(format!(
                "step {} ({what}): accepted, but the policy forbids it",
                self.step
            )
            .into()),
            Err(e) => {
                println!("{:>2}. {what:<62} -> refused: {}", self.step, e.code());
                Ok(())
            }
        }
    }

    /// Catches the replica up (chain and signed head checked) and prints a status line.
    async fn sync(&mut self, what: &str, res: &CommandResult) -> Res<()> {
        self.replica.sync().await?;
        let s = self.replica.state().ok_or("the replica holds no event")?;
        if s.version < res.version {
            return Err(format!(
                "the server answered version {} but served only {} events",
                res.version, s.version
            )
            .into());
        }
        let names: Vec<&str> = res
            .events
            .iter()
            .map(|r| r["event"]["type"].as_str().unwrap_or("?"))
            .collect();
        let escrow = s.ledger.balance(&Account::Escrow);
        println!(
            "{:>2}. {what:<62} -> {:<17} v{:<3} escrow {:>8} (available {:>8})  [{}]",
            self.step,
            s.status.as_str(),
            s.version,
            escrow.posted.amount_string(),
            escrow.available().amount_string(),
            if names.is_empty() {
                "no new event".to_string()
            } else {
                names.join(", ")
            }
        );
        Ok(())
    }

    fn state(&self) -> Res<&PaymentState> {
        Ok(self.replica.state().ok_or("the replica holds no event")?)
    }
}

async fn run() -> Res<()> {
    let out = out_dir()?;
    let base = std::env::var("TRUSTFOLD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let admin = std::env::var("TRUSTFOLD_ADMIN_TOKEN")
        .map_err(|_| "set TRUSTFOLD_ADMIN_TOKEN to the server's admin token")?;
    let anon = wait_for(&base).await?;

    // The key heads are signed with: pinned out of band, or trusted on first use.
    let served = anon.server_key().await?;
    let key: PublicKey = match std::env::var("TRUSTFOLD_SERVER_KEY") {
        Ok(k) => {
            let k: PublicKey = k.trim().parse()?;
            if k != served {
                return Err(
                    format!("the server signs with {served}, not the pinned key {k}").into(),
                );
            }
            println!("server {base}: key {k} (pinned, matches)");
            k
        }
        Err(_) => {
            println!(
                "server {base}: key {served} (first contact; pin it with TRUSTFOLD_SERVER_KEY)"
            );
            served
        }
    };

    let tenant = anon.create_tenant(&admin, "Demo Realty").await?;
    let api_key = tenant["api_key"]
        .as_str()
        .ok_or("the tenant response has no api_key")?;
    // Kept so the demo's data can be read again from the same database (a demo's
    // throwaway tenant: a real key belongs in a secret store, not a file).
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let key_file = out.join("api-key.txt");
    std::fs::write(&key_file, format!("{api_key}\n"))
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    // Pinned: every answer that cannot be checked against the signed head (the state,
    // each command's answer) must be the server's own to that very request.
    let client = Client::new(&base)?.api_key(api_key).pin(key);
    let policy: Value = serde_json::from_str(POLICY)?;
    client.create_policy(&policy).await?;
    println!(
        "tenant {} created; policy {} v{} published\n",
        tenant["tenant_id"].as_str().unwrap_or("?"),
        policy["id"].as_str().unwrap_or("?"),
        policy["version"]
    );

    // Fresh ids for this run's parties and requests.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let seed = PartyId::from_bytes(nanos.to_be_bytes()).uuid();
    let party = |n: u32| PartyId::from_uuid(derive(seed, "party", n));
    let request = |n: u32| RequestId::from_uuid(derive(seed, "request", n));
    let (agent, buyer, seller, escrow, lender) = (party(1), party(2), party(3), party(4), party(5));
    let usd = Currency::new("USD")?;
    let usd_ = |a: &str| Money::parse(a, usd);

    // 1. The listing agent opens the payment.
    let opened = client
        .create_payment(
            &json!({
                "policy": "earnest-money",
                "amount": usd_("5000.00")?,
                "description": "Earnest money, 12 Elm St",
                "initiator": {"party": agent, "roles": ["listing_agent"], "name": "Lee Listing"},
            }),
            None,
        )
        .await?;
    let payment = opened.payment_id;
    println!("payment {payment}\n");
    let mut demo = Demo {
        replica: Replica::new(client.clone(), payment, key)?,
        client: client.clone(),
        payment,
        step: 1,
    };
    demo.sync(
        "listing agent opens a $5,000.00 earnest-money payment",
        &opened,
    )
    .await?;

    // 2. Everyone joins; buyer and seller agree.
    let as_ = |p: PartyId, role: &str| Actor::party(p, role);
    for (p, role, name) in [
        (buyer, "buyer", "Bea Buyer"),
        (seller, "seller", "Sol Seller"),
        (escrow, "escrow_holder", "Esme Escrow"),
        (lender, "lender", "Len Lender"),
    ] {
        demo.run(
            &format!("invite {name} as {role}"),
            &as_(agent, "listing_agent"),
            &Command::Invite {
                party: p,
                roles: vec![Role::new(role)],
                name: name.into(),
                email: Some(format!("{role}@example.com")),
            },
        )
        .await?;
        demo.run(&format!("{name} joins"), &as_(p, role), &Command::Join)
            .await?;
    }
    let terms_hash = demo.state()?.terms_hash;
    for (p, role) in [(buyer, "buyer"), (seller, "seller")] {
        demo.run(
            &format!("{role} agrees to the terms"),
            &as_(p, role),
            &Command::AgreeToTerms { terms_hash },
        )
        .await?;
    }

    // 3. ACH, settled then returned; wire, settled.
    demo.run(
        "buyer attaches a bank account (ACH)",
        &as_(buyer, "buyer"),
        &Command::AttachFundingMethod {
            method: FundingMethod {
                rail: Rail::Ach,
                institution: "First Bank".into(),
                account_last4: "4321".into(),
                holder: "Bea Buyer".into(),
            },
        },
    )
    .await?;
    demo.run(
        "buyer pays $5,000.00 by ACH",
        &as_(buyer, "buyer"),
        &Command::SubmitFunding {
            amount: usd_("5000.00")?,
            rail: Rail::Ach,
            rail_ref: "ach-7781".into(),
        },
    )
    .await?;
    demo.bank(
        "bank: ACH settled",
        "ach-7781",
        RailOutcome::Settled { amount: None },
    )
    .await?;
    let ach_returned = RailOutcome::Returned {
        code: "R01".into(),
        reason: "insufficient funds".into(),
        amount: None,
    };
    demo.bank(
        "bank: ACH returned R01 (insufficient funds)",
        "ach-7781",
        ach_returned.clone(),
    )
    .await?;
    demo.bank(
        "bank: the same return notice again (duplicate)",
        "ach-7781",
        ach_returned,
    )
    .await?;
    // The bank's wire webhook overtakes the integrator's own call: held, then applied
    // by the server once the transfer is recorded.
    let early = demo
        .bank(
            "bank: wire settled, before the transfer is recorded",
            "wire-2231",
            RailOutcome::Settled { amount: None },
        )
        .await?
        .ok_or("the early wire notice was not held")?;
    demo.run(
        "buyer pays again, by wire",
        &as_(buyer, "buyer"),
        &Command::SubmitFunding {
            amount: usd_("5000.00")?,
            rail: Rail::Wire,
            rail_ref: "wire-2231".into(),
        },
    )
    .await?;
    demo.held_applied("server: the held wire notice applied (good funds)", early)
        .await?;

    // 4. A partial release to the seller, then the rest.
    for (n, amount, what) in [
        (1, "2000.00", "a partial release: $2,000.00 to seller"),
        (2, "3000.00", "the rest: $3,000.00 to seller"),
    ] {
        let req = request(n);
        demo.run(
            &format!("escrow holder requests {what}"),
            &as_(escrow, "escrow_holder"),
            &Command::RequestRelease {
                request: req,
                allocations: vec![Allocation {
                    party: seller,
                    amount: usd_(amount)?,
                }],
            },
        )
        .await?;
        let allocations_hash = demo
            .state()?
            .requests
            .get(&req)
            .ok_or("the release request is not in the replica")?
            .allocations_hash;
        let approve = Command::Approve {
            request: req,
            allocations_hash,
        };
        if n == 1 {
            demo.refuse("lender tries to approve", &as_(lender, "lender"), &approve)
                .await?;
        }
        demo.run("buyer approves", &as_(buyer, "buyer"), &approve)
            .await?;
        demo.run("seller approves", &as_(seller, "seller"), &approve)
            .await?;
        let rail_ref = format!("out-{n}");
        demo.run(
            "escrow holder sends it by wire",
            &as_(escrow, "escrow_holder"),
            &Command::SubmitDisbursement {
                request: req,
                rail: Rail::Wire,
                rail_ref: rail_ref.clone(),
            },
        )
        .await?;
        demo.bank(
            "bank: disbursement settled",
            &rail_ref,
            RailOutcome::Settled { amount: None },
        )
        .await?;
    }

    let state = demo.state()?.clone();
    if state.status != Status::Completed {
        return Err(format!("the payment ended {:?}, not Completed", state.status).into());
    }
    check(&demo, &state, &key).await?;
    export_and_verify(&client, &state, &key, &out).await
}

/// The replica against the signed head and the server's read model.
async fn check(demo: &Demo, state: &PaymentState, key: &PublicKey) -> Res<()> {
    let mut fresh = Replica::new(demo.client.clone(), demo.payment, *key)?;
    let n = fresh.sync().await?;
    let rebuilt = fresh.state().ok_or("a fresh replica fetched nothing")?;
    if rebuilt.to_json() != state.to_json() {
        return Err("a fresh replica does not rebuild the same state".into());
    }
    println!(
        "\nreplica: {n} events, hash chain intact, signed head at seq {} verified with {key}",
        state.version
    );
    let diff = demo.replica.diff().await?;
    if !diff.is_empty() {
        return Err(format!(
            "the server's read model differs from the verified replica at {}",
            diff.join(", ")
        )
        .into());
    }
    println!("server read model vs replica: no difference");
    Ok(())
}

/// Writes the history and its signed head as `trustfold fetch` does, verifies the
/// files offline, and shows that a tampered copy fails at the exact event.
async fn export_and_verify(
    client: &Client,
    state: &PaymentState,
    key: &PublicKey,
    out: &Path,
) -> Res<()> {
    let payment = state.payment;
    let mut body: Vec<u8> = b"[\n".to_vec();
    let (mut after, mut n) = (0u64, 0u64);
    let mut last = None;
    loop {
        let page = client.events(payment, after, 1000).await?;
        for r in &page.events {
            if n > 0 {
                body.extend_from_slice(b",\n");
            }
            body.extend_from_slice(format!("{{\"hash\":\"{}\",\"event\":", r.hash).as_bytes());
            body.extend_from_slice(r.event.get().as_bytes());
            body.push(b'}');
            n += 1;
            last = Some(r.hash);
        }
        after = page.next;
        if !page.has_more || page.events.is_empty() {
            break;
        }
    }
    body.extend_from_slice(b"\n]\n");
    if last != Some(state.head) {
        return Err("the exported history does not end at the replica's head".into());
    }
    let head = client.head(payment).await?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let history_path = out.join("earnest-money.history.json");
    let head_path = out.join("earnest-money.history.json.head.json");
    let key_path = out.join("server-key.txt");
    std::fs::write(&history_path, &body).map_err(|e| format!("{}: {e}", history_path.display()))?;
    std::fs::write(&head_path, serde_json::to_vec(&head)?)
        .map_err(|e| format!("{}: {e}", head_path.display()))?;
    std::fs::write(&key_path, format!("{key}\n"))
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    println!(
        "exported: {} ({n} events, {} bytes) + {}; server key in {}",
        history_path.display(),
        body.len(),
        head_path.display(),
        key_path.display()
    );

    let report = Verifier::new()
        .key(*key)
        .heads_file(&head_path)
        .verify_path(&history_path)?;
    let offline = report.last.ok_or("the verifier found no payment")?;
    if report.signed != 1 || offline.to_json() != state.to_json() {
        return Err("the offline verification does not rebuild the replica's state".into());
    }
    println!(
        "offline verify: {} events, signed head checked, rebuilt state identical: {:?} at v{}",
        report.events, offline.status, offline.version
    );

    // A forger changes one digit of the wire funding's amount.
    let text = String::from_utf8(body)?;
    let tampered: String = text
        .lines()
        .map(|l| {
            if l.contains("\"wire-2231\"") && l.contains("FundingSubmitted") {
                l.replacen("5000.00", "9000.00", 1)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if tampered == text.trim_end() {
        return Err("found no wire funding to tamper with".into());
    }
    let tampered_path = out.join("earnest-money.tampered.history.json");
    std::fs::write(&tampered_path, tampered)
        .map_err(|e| format!("{}: {e}", tampered_path.display()))?;
    match Verifier::new()
        .key(*key)
        .heads_file(&head_path)
        .verify_path(&tampered_path)
    {
        Ok(_) => return Err("a tampered copy verified".into()),
        Err(e) => match e.broken() {
            Some(b) => println!(
                "tampered copy (one digit changed): rejected at event seq {} (line {}): {}",
                b.seq.map_or("?".into(), |s| s.to_string()),
                b.line.map_or("?".into(), |s| s.to_string()),
                b.error.code()
            ),
            None => return Err(format!("the tampered copy failed for another reason: {e}").into()),
        },
    }

    println!("\ncheck it yourself, offline (trusting only the server's key):");
    println!(
        "  trustfold verify {} --key {key} --head {}",
        history_path.display(),
        head_path.display()
    );
    println!("  (from this repository: cargo run -q -p trustfold -- verify …)");
    println!("\nfinal state: {:?}", state.status);
    Ok(())
}
