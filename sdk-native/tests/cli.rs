//! The real `trustfold` binary on the golden vectors and on generated exports.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trustfold"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run trustfold")
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// `verify --json` gives every vector's expected outcome, with exit 0 or 1; `replay`
/// prints the expected state byte for byte.
#[test]
fn golden_vectors_verify_and_replay() {
    let dir = support::vectors_dir();
    let tmp = tempfile::tempdir().expect("tmp");
    let mut n = 0;
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("vectors")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".expected.json"))
        .collect();
    names.sort();
    for file in names {
        let name = file.trim_end_matches(".expected.json");
        let text = std::fs::read_to_string(dir.join(&file)).expect("read");
        let exp: Value = serde_json::from_str(&text).expect("json");
        let history = dir.join(format!("{name}.history.json"));
        let history = history.to_str().expect("utf8 path");
        let key = exp["key"].as_str().expect("key");
        let mut args = vec!["verify", history, "--key", key, "--json"];
        let head = tmp.path().join(format!("{name}.head.json"));
        if !exp["head"].is_null() {
            std::fs::write(&head, exp["head"].to_string()).expect("write head");
            args.extend(["--head", head.to_str().expect("utf8")]);
        }
        let o = run(&args);
        let got = json_out(&o);
        let want = &exp["verify"];
        for k in ["ok", "code", "seq", "message", "len", "head"] {
            assert_eq!(got.get(k), want.get(k), "{name}: field {k}");
        }
        let ok = want["ok"] == true;
        assert_eq!(
            o.status.code(),
            Some(if ok { 0 } else { 1 }),
            "{name}: exit code"
        );
        if ok {
            let o = run(&["replay", history]);
            assert!(o.status.success(), "{name}: replay");
            let state = text.trim_end();
            let state = &state[state.find("\"state\":").expect("state") + 8..state.len() - 1];
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).trim_end(),
                state,
                "{name}: state"
            );
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("FAILED: "), "{name}: {err}");
        }
        n += 1;
    }
    assert!(n >= 30, "{n} vectors");
}

#[test]
fn text_summary_replay_views_and_usage_errors() {
    let h = support::vectors_dir().join("em_happy_wire.history.json");
    let h = h.to_str().expect("utf8");
    let key = support::key().to_string(); // not the vectors' key, fine without a head
    let o = run(&["verify", h, "--key", &key]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("verified: 1 payment, 25 events"), "{out}");
    assert!(out.contains("no signed head given"), "{out}");
    assert!(out.contains("5000.00 USD"), "{out}");

    let o = run(&["replay", h, "--at", "3", "--as", "buyer"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json_out(&o);
    assert_eq!(v["version"], 3);
    for beyond in ["26", "0"] {
        let o = run(&["replay", h, "--at", beyond]);
        assert_eq!(o.status.code(), Some(2), "--at {beyond}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("run from 1 to"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = run(&["replay", h, "--as", "nobody"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("role `nobody`"));

    let o = run(&["verify", h, "--key", "not-a-key"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["verify", "/nonexistent/file", "--key", &key]);
    assert_eq!(o.status.code(), Some(2));

    // A pipe is refused by name: the layout check reads its start, which a second read
    // would not see again (a tampered export piped in used to pass).
    let mut child = bin()
        .args(["verify", "/dev/stdin", "--key", &key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        // The reader may stop early (refused): a closed pipe here is fine.
        let _ = stdin.write_all(&std::fs::read(h).expect("vector"));
    }
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a regular file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A directory given as the heads file is a usage error too (exit 2), not a payment
    // that failed to verify (exit 1).
    let dir = tempfile::tempdir().expect("tmp");
    let o = run(&[
        "verify",
        h,
        "--key",
        &key,
        "--head",
        dir.path().to_str().expect("utf8"),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--head"));
}

/// A pretty-printed history is not the streamed layout: it is checked whole, with the
/// same result.
#[test]
fn other_layouts_fall_back_to_whole_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src =
        std::fs::read(support::vectors_dir().join("ms_two_of_three.history.json")).expect("read");
    let v: Value = serde_json::from_slice(&src).expect("json");
    // Re-serializing would change the events' bytes: indent only the outer array.
    let records = trustfold::history::parse(&src).expect("parse");
    let mut pretty = String::from("[ ");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            pretty.push_str(" ,\n  ");
        }
        pretty.push_str(&format!(
            "{{ \"hash\" : \"{}\", \"event\" : {} }}",
            r.hash,
            r.event.get()
        ));
    }
    pretty.push_str(" ]");
    assert_eq!(v.as_array().map(|a| a.len()), Some(records.len()));
    let p = tmp.path().join("pretty.json");
    std::fs::write(&p, pretty).expect("write");
    let o = run(&[
        "verify",
        p.to_str().expect("utf8"),
        "--key",
        &support::key().to_string(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_out(&o)["len"], records.len());
}

struct Export {
    _dir: tempfile::TempDir,
    events: std::path::PathBuf,
    heads: std::path::PathBuf,
}

fn export(events: u64) -> Export {
    let dir = tempfile::tempdir().expect("tmp");
    let e = dir.path().join("export.ndjson");
    let h = dir.path().join("heads.ndjson");
    support::write_export(&e, &h, events);
    Export {
        _dir: dir,
        events: e,
        heads: h,
    }
}

fn verify_export(events: &Path, heads: &Path) -> Output {
    run(&[
        "verify",
        events.to_str().expect("utf8"),
        "--key",
        &support::key().to_string(),
        "--head",
        heads.to_str().expect("utf8"),
        "--json",
    ])
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .expect("read")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn export_verifies_and_tampering_fails_at_the_right_event() {
    let x = export(3000);
    let o = verify_export(&x.events, &x.heads);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json_out(&o);
    assert_eq!(v["events"], 3000);
    assert_eq!(v["payments"], v["signed"]);
    let payments = v["payments"].as_u64().expect("payments");
    assert!(payments > 100);

    let all = lines(&x.events);
    // The 2000th line: which payment and seq is it?
    let target = 1999;
    let env: Value = serde_json::from_str(&all[target]).expect("record");
    let stream = env["event"]["stream"].as_str().expect("stream").to_string();
    let seq = env["event"]["seq"].as_u64().expect("seq");

    // 1. An altered amount (or any byte) in that event.
    let mut t = all.clone();
    t[target] = t[target].replacen("\"at\":\"2026", "\"at\":\"2027", 1);
    assert_ne!(t[target], all[target]);
    std::fs::write(&x.events, t.join("\n") + "\n").expect("write");
    let o = verify_export(&x.events, &x.heads);
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&o);
    assert_eq!(v["code"], "chain_broken");
    assert_eq!(v["seq"], seq);
    assert_eq!(v["stream"], stream.as_str());
    assert_eq!(v["line"], target + 1);
    assert!(v["message"]
        .as_str()
        .expect("msg")
        .contains("the event was altered"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "payment {stream}, event seq {seq} (line {})",
            target + 1
        )),
        "{err}"
    );

    // 2. That event removed: the next one's prev no longer matches (or the head is past the end).
    let mut t = all.clone();
    t.remove(target);
    std::fs::write(&x.events, t.join("\n") + "\n").expect("write");
    let v = json_out(&verify_export(&x.events, &x.heads));
    assert_eq!(v["code"], "chain_broken");
    assert_eq!(v["stream"], stream.as_str());

    // 3. A whole payment removed from the events: its head says it existed.
    let t: Vec<&String> = all.iter().filter(|l| !l.contains(&stream)).collect();
    std::fs::write(
        &x.events,
        t.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n") + "\n",
    )
    .expect("write");
    let v = json_out(&verify_export(&x.events, &x.heads));
    assert_eq!(v["code"], "chain_broken", "{v}");
    assert_eq!(v["stream"], stream.as_str());
    assert!(v["message"]
        .as_str()
        .expect("msg")
        .contains("events were removed from its end"));

    // 4. Its head removed instead: the payment is unsigned.
    std::fs::write(&x.events, all.join("\n") + "\n").expect("write");
    let heads = lines(&x.heads);
    let t: Vec<&String> = heads.iter().filter(|l| !l.contains(&stream)).collect();
    std::fs::write(
        &x.heads,
        t.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n") + "\n",
    )
    .expect("write");
    let v = json_out(&verify_export(&x.events, &x.heads));
    assert_eq!(v["code"], "bad_signature", "{v}");
    assert_eq!(v["stream"], stream.as_str());

    // 5. Payments out of order.
    std::fs::write(&x.heads, heads.join("\n") + "\n").expect("write");
    let first: Value = serde_json::from_str(&all[0]).expect("record");
    let first = first["event"]["stream"]
        .as_str()
        .expect("stream")
        .to_string();
    let first_len = all.iter().take_while(|l| l.contains(&first)).count();
    assert!(first_len > 0 && first_len < all.len());
    let mut t = all[first_len..].to_vec();
    t.extend_from_slice(&all[..first_len]);
    std::fs::write(&x.events, t.join("\n") + "\n").expect("write");
    // With the heads: the first head's payment is not where it should be.
    let v = json_out(&verify_export(&x.events, &x.heads));
    assert_eq!(v["code"], "chain_broken", "{v}");
    assert_eq!(v["stream"], first.as_str());
    // Without: the order itself is the problem.
    let o = run(&[
        "verify",
        x.events.to_str().expect("utf8"),
        "--key",
        &support::key().to_string(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&o);
    assert!(
        v["message"].as_str().expect("msg").contains("ascending"),
        "{v}"
    );

    // 6. A payment's events past its signed head (a forged extension, or a head signed
    // before the last event): the first unsigned event is named, not folded.
    std::fs::write(&x.events, all.join("\n") + "\n").expect("write");
    let own: Vec<Value> = all
        .iter()
        .filter(|l| l.contains(&stream))
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let before_last = &own[own.len() - 2];
    let seq = before_last["event"]["seq"].as_u64().expect("seq");
    let hash: trustfold::hash::Hash = before_last["hash"]
        .as_str()
        .expect("hash")
        .parse()
        .expect("hash");
    let id: trustfold::id::PaymentId = stream.parse().expect("id");
    let old = trustfold::history::SignedHead::sign(id, seq, hash, &support::SECRET);
    let t: Vec<String> = heads
        .iter()
        .map(|l| {
            if l.contains(&stream) {
                serde_json::to_string(&old).expect("head")
            } else {
                l.clone()
            }
        })
        .collect();
    std::fs::write(&x.heads, t.join("\n") + "\n").expect("write");
    let o = verify_export(&x.events, &x.heads);
    assert_eq!(o.status.code(), Some(1));
    let v = json_out(&o);
    assert_eq!(v["code"], "chain_broken", "{v}");
    assert_eq!(v["stream"], stream.as_str());
    assert_eq!(v["seq"], seq + 1, "{v}");
    assert!(
        v["message"]
            .as_str()
            .expect("msg")
            .contains("not signed by the server"),
        "{v}"
    );
}

#[test]
fn a_bad_heads_line_fails_when_its_block_of_heads_is_reached() {
    // Heads are read in blocks of 128 lines: a malformed line fails its block, which is
    // reported when the verifier reaches the first payment of that block (however far
    // ahead the heads are read), so an earlier broken payment is reported first.
    let x = export(4000);
    let all = lines(&x.events);
    let heads = lines(&x.heads);
    assert!(heads.len() > 150, "{} heads", heads.len());
    let third: Value = serde_json::from_str(&heads[2]).expect("head");
    let third = third["stream"].as_str().expect("stream").to_string();
    let target = all.iter().position(|l| l.contains(&third)).expect("third") + 1;
    let mut t = all.clone();
    t[target] = t[target].replacen("\"at\":\"2026", "\"at\":\"2027", 1);
    std::fs::write(&x.events, t.join("\n") + "\n").expect("write");
    let mut h = heads.clone();
    h[149] = "{\"stream\":".into();
    std::fs::write(&x.heads, h.join("\n") + "\n").expect("write");
    let v = json_out(&verify_export(&x.events, &x.heads));
    assert_eq!(v["code"], "chain_broken", "{v}");
    assert_eq!(v["stream"], third.as_str());
    assert_eq!(v["line"], target + 1);

    // In the first block: reported at the first payment, before the broken one.
    let mut h = heads.clone();
    h[49] = "{\"stream\":".into();
    std::fs::write(&x.heads, h.join("\n") + "\n").expect("write");
    let v = json_out(&verify_export(&x.events, &x.heads));
    assert_eq!(v["code"], "malformed_json", "{v}");
    assert!(
        v["message"]
            .as_str()
            .expect("msg")
            .contains("line 50: not a signed head"),
        "{v}"
    );
    let first: Value = serde_json::from_str(&heads[0]).expect("head");
    assert_eq!(v["stream"], first["stream"]);
}

#[test]
fn replay_one_payment_of_an_export() {
    let x = export(500);
    let all = lines(&x.events);
    let env: Value = serde_json::from_str(&all[250]).expect("record");
    let stream = env["event"]["stream"].as_str().expect("stream");
    let o = run(&[
        "replay",
        x.events.to_str().expect("utf8"),
        "--payment",
        stream,
        "--at",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json_out(&o);
    assert_eq!(v["payment"], stream);
    assert_eq!(v["version"], 2);
    let o = run(&["replay", x.events.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--payment"));
}
