//! The example end to end: a real server (in-process, on a temporary SQLite file,
//! over loopback HTTP) and the `earnest-money` binary run against it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use trustfold_server::app::{start, Config};

const ADMIN: &str = "admin-token-for-the-example-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_runs_exports_and_verifies() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = Config::new(dir.path().join("trustfold.db").display().to_string());
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.http.admin_token = Some(ADMIN.into());
    c.http.poll_interval = Duration::from_millis(100);
    let running = start(c).await.expect("server starts");
    let base = format!("http://{}", running.addr);
    let out = dir.path().join("out");

    let run = |key: Option<String>, admin: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_earnest-money"));
        cmd.env("TRUSTFOLD_URL", &base)
            .env("TRUSTFOLD_ADMIN_TOKEN", admin)
            .env_remove("TRUSTFOLD_SERVER_KEY")
            .env_remove("TRUSTFOLD_DEMO_OUT")
            .arg("--out-dir")
            .arg(&out);
        if let Some(k) = key {
            cmd.env("TRUSTFOLD_SERVER_KEY", k);
        }
        cmd.output().expect("the example runs")
    };
    let ok = tokio::task::block_in_place(|| run(None, ADMIN));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        ok.status,
        String::from_utf8_lossy(&ok.stderr)
    );
    for expected in [
        "[FundingReturned]",
        "[no new event]",
        "-> held by the server: no payment recorded wire-2231 yet",
        "[held notice applied]",
        "lender tries to approve",
        "-> refused: not_permitted",
        "server read model vs replica: no difference",
        "offline verify: 31 events, signed head checked, rebuilt state identical: Completed at v31",
        "rejected at event seq 17",
        "trustfold verify ",
        "final state: Completed",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing from:\n{stdout}"
        );
    }
    let history = std::fs::read(out.join("earnest-money.history.json")).expect("history");
    assert!(history.starts_with(b"[\n{\"hash\":\""));
    assert!(out.join("earnest-money.history.json.head.json").exists());

    // The file verifies again with the SDK, against the key the example wrote.
    let key: trustfold::history::PublicKey = std::fs::read_to_string(out.join("server-key.txt"))
        .expect("key file")
        .trim()
        .parse()
        .expect("a key");
    let report = trustfold::verify::Verifier::new()
        .key(key)
        .heads_file(out.join("earnest-money.history.json.head.json"))
        .verify_path(out.join("earnest-money.history.json"))
        .expect("verifies");
    assert_eq!((report.events, report.signed), (31, 1));

    // A wrong pinned key and a wrong admin token both end in a non-zero exit.
    let wrong_key = "2152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db12";
    assert_ne!(wrong_key, key.to_string());
    let bad = tokio::task::block_in_place(|| run(Some(wrong_key.into()), ADMIN));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not the pinned key"));
    let bad = tokio::task::block_in_place(|| run(Some(key.to_string()), "not-the-admin"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("FAILED"));

    running.shutdown().await.expect("clean shutdown");
}
