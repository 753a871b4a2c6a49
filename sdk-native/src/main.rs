//! The `trustfold` command-line tool: verify and replay payment histories offline,
//! fetch and follow them from a server.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use trustfold::history::PublicKey;
use trustfold::id::PaymentId;
use trustfold::policy::Role;
use trustfold::verify::{Layout, Report, Verifier};
use trustfold::Error;

/// `println!` that survives a closed pipe (`trustfold … | head -1`): the output is
/// gone, the process is not (no panic, no backtrace).
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `eprintln!` that survives a closed standard error.
macro_rules! say_err {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

/// Says that a history does not verify (and why) and gives the exit status for it, 1
/// (2 is for usage, I/O and network errors).
fn failed(b: &trustfold::error::Broken) -> ExitCode {
    say_err!("FAILED: {b}");
    say_err!("code: {}", b.error.code());
    ExitCode::from(1)
}

/// Verify, replay, fetch and follow trustfold payment histories.
#[derive(Parser)]
#[command(name = "trustfold", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check a history or an export offline: hash chain, sequence, signed heads, fold.
    ///
    /// Exit status: 0 verified, 1 the history does not verify (the broken event is
    /// printed), 2 a usage or I/O error.
    Verify {
        /// A history (JSON array, one record per line) or an export (NDJSON).
        history: PathBuf,
        /// The server's public key: 64 hex digits, or a file holding them (or the JSON
        /// of GET /v1/server-key).
        #[arg(long)]
        key: String,
        /// The signed head (one JSON object), or for an export the heads file (NDJSON,
        /// one head per payment, in payment order).
        #[arg(long)]
        head: Option<PathBuf>,
        /// Print the outcome as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print a payment's state (or a role's redacted view of it) as JSON, at the end
    /// of its history or at any sequence number. The hash chain is checked.
    Replay {
        /// A history or an export.
        history: PathBuf,
        /// Show what these roles may see (repeat for a party with several roles).
        #[arg(long = "as", value_name = "ROLE")]
        roles: Vec<String>,
        /// Fold only up to this sequence number.
        #[arg(long)]
        at: Option<u64>,
        /// In an export, the payment to show.
        #[arg(long)]
        payment: Option<PaymentId>,
        /// Indent the JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Download a payment's history (and its signed head) from a server: the head
    /// first, then the events it signs. The files are replaced only by a complete
    /// download (as many events as the signed head's seq; verified first, with --key);
    /// otherwise they stay as they were.
    ///
    /// Exit status: 0 fetched, 1 the download is short of the signed head or does not
    /// verify, 2 a usage, I/O or network error.
    Fetch {
        /// The payment id.
        payment: PaymentId,
        /// The server's base URL.
        #[arg(long, env = "TRUSTFOLD_SERVER")]
        server: String,
        /// Where to write the history (the head goes to FILE.head.json).
        #[arg(long)]
        out: PathBuf,
        /// A tenant API key or participant token.
        #[arg(long, env = "TRUSTFOLD_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Verify the download against this pinned server key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Follow a payment live: verify and fold each new event, print one line each.
    ///
    /// Exit status: 0 the output was closed, 1 the history or a new event does not
    /// verify (in the first sync as while following; the broken event is printed), 2 a
    /// usage, I/O or network error, or the server's refusal.
    Tail {
        /// The payment id.
        payment: PaymentId,
        /// The server's base URL.
        #[arg(long, env = "TRUSTFOLD_SERVER")]
        server: String,
        /// A tenant API key or participant token.
        #[arg(long, env = "TRUSTFOLD_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// The pinned server key (hex, or a file).
        #[arg(long)]
        key: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Verify {
            history,
            key,
            head,
            json,
            quiet,
        } => verify(&history, &key, head.as_deref(), None, json, quiet),
        Cmd::Replay {
            history,
            roles,
            at,
            payment,
            pretty,
        } => replay(&history, &roles, at, payment, pretty),
        Cmd::Fetch {
            payment,
            server,
            out,
            api_key,
            key,
        } => runtime().and_then(|rt| {
            rt.block_on(fetch(
                payment,
                &server,
                &out,
                api_key.as_deref(),
                key.as_deref(),
            ))
        }),
        Cmd::Tail {
            payment,
            server,
            api_key,
            key,
        } => runtime().and_then(|rt| rt.block_on(tail(payment, &server, api_key.as_deref(), &key))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            say_err!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// A key given inline or in a file (hex, or the server-key JSON).
fn parse_key(arg: &str) -> Result<PublicKey, Error> {
    if let Ok(k) = arg.parse() {
        return Ok(k);
    }
    let text = std::fs::read_to_string(arg).map_err(|e| {
        Error::Usage(format!(
            "--key {arg}: neither 64 hex digits nor a readable file ({e})"
        ))
    })?;
    if let Ok(k) = text.trim().parse() {
        return Ok(k);
    }
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| Error::Usage(format!("{arg}: no public key in this file")))?;
    v.get("public_key")
        .or_else(|| v.get("key"))
        .and_then(|k| k.as_str())
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| Error::Usage(format!("{arg}: no `public_key` of 64 hex digits")))
}

/// A byte-progress bar on stderr for files worth it, when stderr is a terminal.
fn progress(
    path: &Path,
    quiet: bool,
) -> Option<(indicatif::ProgressBar, trustfold::verify::Progress)> {
    let len = std::fs::metadata(path).ok()?.len();
    if quiet || len < 16 << 20 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec}, {eta} left",
    ) {
        bar.set_style(style);
    }
    let b = bar.clone();
    Some((bar, Arc::new(move |n| b.set_position(n))))
}

fn verify(
    path: &Path,
    key: &str,
    head: Option<&Path>,
    payment: Option<PaymentId>,
    json: bool,
    quiet: bool,
) -> Result<ExitCode, Error> {
    let key = parse_key(key)?;
    let mut v = Verifier::new().key(key);
    if let Some(p) = payment {
        // Fetched for one payment: another payment's genuine history is not it.
        v = v.payment(p);
    }
    if let Some(h) = head {
        v = v.heads_file(h);
    }
    let bar = progress(path, quiet || json);
    if let Some((_, p)) = &bar {
        v = v.progress(p.clone());
    }
    let t0 = Instant::now();
    let result = v.verify_path(path);
    let secs = t0.elapsed().as_secs_f64();
    if let Some((b, _)) = bar {
        b.finish_and_clear();
    }
    let mut out = std::io::stdout().lock();
    match result {
        Ok(r) => {
            if json {
                let _ = writeln!(out, "{}", success_json(&r));
            } else {
                print_summary(&mut out, &r, secs, head.is_some());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Broken(b)) => {
            if json {
                let v = serde_json::json!({
                    "ok": false,
                    "code": b.error.code(),
                    "seq": b.error.seq(),
                    "message": b.error.to_string(),
                    "stream": b.stream.map(|s| s.to_string()),
                    "line": b.line,
                });
                let _ = writeln!(out, "{v}");
            }
            Ok(failed(&b))
        }
        Err(e) => Err(e),
    }
}

fn success_json(r: &Report) -> String {
    match (&r.last, r.layout) {
        (Some(s), Layout::History | Layout::Whole) => {
            format!(
                "{{\"ok\":true,\"len\":{},\"head\":\"{}\"}}",
                s.version, s.head
            )
        }
        _ => serde_json::json!({
            "ok": true,
            "payments": r.payments,
            "events": r.events,
            "signed": r.signed,
        })
        .to_string(),
    }
}

fn print_summary(out: &mut impl Write, r: &Report, secs: f64, had_head: bool) {
    let rate = if secs > 0.0 {
        r.events as f64 / secs
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "verified: {} payment{}, {} events, {} signed head{} checked ({} bytes in {:.2}s, {:.0} events/s)",
        r.payments,
        if r.payments == 1 { "" } else { "s" },
        r.events,
        r.signed,
        if r.signed == 1 { "" } else { "s" },
        r.bytes,
        secs,
        rate
    );
    if !had_head {
        let _ = writeln!(
            out,
            "note: no signed head given: the history is consistent, but nothing shows the server wrote it or that its end is complete"
        );
    }
    if r.payments > 1 {
        let statuses: Vec<String> = r
            .statuses
            .iter()
            .map(|(s, n)| format!("{s:?} {n}"))
            .collect();
        let _ = writeln!(out, "statuses: {}", statuses.join(", "));
    }
    if let Some(s) = &r.last {
        let label = if r.payments > 1 {
            "last payment"
        } else {
            "payment"
        };
        let _ = writeln!(
            out,
            "{label} {}: {:?} at version {}",
            s.payment, s.status, s.version
        );
        let _ = writeln!(out, "  head      {}", s.head);
        let _ = writeln!(out, "  policy    {} v{}", s.policy.id, s.policy.version);
        let _ = writeln!(out, "  amount    {}", s.amount);
        let _ = writeln!(out, "  funded    {}", s.funded_total());
        let _ = writeln!(out, "  escrow    {} available", s.escrow_available());
        let _ = writeln!(
            out,
            "  parties   {}",
            s.participants.values().filter(|p| !p.removed).count()
        );
        let _ = writeln!(out, "  updated   {}", s.updated_at);
    }
}

fn replay(
    path: &Path,
    roles: &[String],
    at: Option<u64>,
    payment: Option<PaymentId>,
    pretty: bool,
) -> Result<ExitCode, Error> {
    if at == Some(0) {
        return Err(Error::Usage(
            "--at 0: sequence numbers run from 1 to the history's length".into(),
        ));
    }
    let mut v = Verifier::new();
    if let Some(a) = at {
        v = v.at(a);
    }
    if let Some(p) = payment {
        v = v.payment(p);
    }
    let r = match v.verify_path(path) {
        Ok(r) => r,
        Err(Error::Broken(b)) => {
            return Ok(failed(&b));
        }
        Err(e) => return Err(e),
    };
    if r.payments > 1 && payment.is_none() {
        return Err(Error::Usage(format!(
            "{} holds {} payments: choose one with --payment ID",
            path.display(),
            r.payments
        )));
    }
    let state = r
        .last
        .ok_or_else(|| Error::Usage("no payment in this file".into()))?;
    if let Some(a) = at {
        // As `stateAt` in the SDKs: a sequence the history does not reach is an error,
        // not the last state.
        if a > state.version {
            return Err(Error::Usage(format!(
                "--at {a}: no event {a} in this history (sequence numbers run from 1 to {})",
                state.version
            )));
        }
    }
    let text = if roles.is_empty() {
        if pretty {
            state.to_json_pretty()
        } else {
            String::from_utf8_lossy(&state.to_json()).into_owned()
        }
    } else {
        let roles: Vec<Role> = roles.iter().map(Role::new).collect();
        for r in &roles {
            if !state.policy_doc.roles.contains_key(r) {
                return Err(Error::Usage(format!(
                    "role `{}` is not in policy {}: roles are {}",
                    r.0,
                    state.policy.id,
                    state
                        .policy_doc
                        .roles
                        .keys()
                        .map(|r| r.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let view = trustfold::view::state_view(&state, &roles);
        if pretty {
            serde_json::to_string_pretty(&view)
        } else {
            serde_json::to_string(&view)
        }
        .map_err(|e| Error::Usage(e.to_string()))?
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))
}

fn client(server: &str, api_key: Option<&str>) -> Result<trustfold::client::Client, Error> {
    let c = trustfold::client::Client::new(server)?;
    Ok(match api_key {
        Some(k) => c.api_key(k),
        None => c,
    })
}

async fn fetch(
    payment: PaymentId,
    server: &str,
    out: &Path,
    api_key: Option<&str>,
    key: Option<&str>,
) -> Result<ExitCode, Error> {
    // A bad key is reported before anything is downloaded or written. With one, the
    // head must be the server's answer to this fetch (a fresh nonce it signs), not an
    // older head replayed to hide what came after it.
    let pinned = key.map(parse_key).transpose()?;
    let mut c = client(server, api_key)?;
    if let Some(k) = pinned {
        c = c.pin(k);
    }
    let (body, head) = match c.fetch_history(payment).await {
        Ok(pair) => pair,
        // The download does not hold together (its pages end before the signed head):
        // nothing is written, as for a download that does not verify.
        Err(Error::Broken(b)) => {
            let code = failed(&b);
            say_err!(
                "{} and {}.head.json left as they were",
                out.display(),
                out.display()
            );
            return Ok(code);
        }
        Err(e) => return Err(e),
    };
    let n = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body)
        .map_err(|e| Error::Transport(format!("bad history: {e}")))?
        .len();
    let head_path = PathBuf::from(format!("{}.head.json", out.display()));
    let head_json = serde_json::to_string(&head).map_err(|e| Error::Usage(e.to_string()))?;
    // Written beside their targets and moved over them only when complete (and, with
    // --key, verified): a full disk, a kill or a tampered download leaves the files of
    // the last good fetch as they were.
    let tmp_out = beside(out);
    let tmp_head = beside(&head_path);
    let written =
        write_synced(&tmp_out, &body).and_then(|()| write_synced(&tmp_head, head_json.as_bytes()));
    let checked = match (written, key) {
        (Err(e), _) => Err(e),
        (Ok(()), Some(k)) => verify(&tmp_out, k, Some(&tmp_head), Some(payment), false, true),
        (Ok(()), None) => Ok(ExitCode::SUCCESS),
    };
    let done = match checked {
        Ok(code) if code == ExitCode::SUCCESS => std::fs::rename(&tmp_out, out)
            .and_then(|()| std::fs::rename(&tmp_head, &head_path))
            .map(|()| code)
            .map_err(|e| Error::Usage(format!("{}: {e}", out.display()))),
        other => other,
    };
    let _ = std::fs::remove_file(&tmp_out);
    let _ = std::fs::remove_file(&tmp_head);
    match &done {
        Ok(code) if *code == ExitCode::SUCCESS => say_err!(
            "fetched {n} events of {payment} to {} (signed head at seq {} in {})",
            out.display(),
            head.seq,
            head_path.display()
        ),
        _ => say_err!(
            "{} and {} left as they were",
            out.display(),
            head_path.display()
        ),
    }
    done
}

/// A temporary name beside `path`, unique to this process.
fn beside(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.tmp-{}", path.display(), std::process::id()))
}

/// Writes `bytes` to `path` and waits until they are on disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Usage(format!("{}: {e}", path.display()));
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

async fn tail(
    payment: PaymentId,
    server: &str,
    api_key: Option<&str>,
    key: &str,
) -> Result<ExitCode, Error> {
    let key = parse_key(key)?;
    let mut r = trustfold::replica::Replica::new(client(server, api_key)?, payment, key)?;
    // A history that does not verify is the same failure in the first sync as while
    // following: FAILED and exit 1 (2 is for usage, I/O and network errors).
    let n = match r.sync().await {
        Ok(n) => n,
        Err(Error::Broken(b)) => {
            return Ok(failed(&b));
        }
        Err(e) => return Err(e),
    };
    if let Some(s) = r.state() {
        say!(
            "{payment}: {n} events verified, {:?} at version {}",
            s.status,
            s.version
        );
    }
    let result = r
        .follow(|s| {
            // A reader that went away (`| head`) ends the follow.
            writeln!(
                std::io::stdout().lock(),
                "#{} {:?} escrow {} (head {})",
                s.version,
                s.status,
                s.escrow_available(),
                s.head
            )
            .is_ok()
        })
        .await;
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Error::Broken(b)) => Ok(failed(&b)),
        Err(e) => Err(e),
    }
}
