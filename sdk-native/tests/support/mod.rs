//! Shared by the tests and the benchmark: golden vectors, and exports made from them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use trustfold::export::ExportWriter;
use trustfold::hash::Hash;
use trustfold::history::{self, PublicKey, SignedHead};
use trustfold::id::PaymentId;

/// The secret the exports made here are signed with.
pub const SECRET: [u8; 32] = [7; 32];

pub fn key() -> PublicKey {
    PublicKey::from_secret(&SECRET)
}

pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/vectors")
}

/// The golden vectors whose history verifies: (name, history bytes), sorted by name.
pub fn valid_histories() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(vectors_dir())
        .expect("vectors")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".expected.json"))
        .collect();
    names.sort();
    for n in names {
        let exp: serde_json::Value =
            serde_json::from_slice(&std::fs::read(vectors_dir().join(&n)).expect("read"))
                .expect("json");
        if exp["verify"]["ok"] == true {
            let name = n.trim_end_matches(".expected.json").to_string();
            let h =
                std::fs::read(vectors_dir().join(format!("{name}.history.json"))).expect("read");
            out.push((name, h));
        }
    }
    out
}

/// The events of a history moved to another payment id: the stream id replaced in
/// every event's bytes, `prev` and hashes recomputed. Returns (hash, event bytes).
pub fn restream(history_json: &[u8], to: PaymentId, take: usize) -> Vec<(Hash, Vec<u8>)> {
    let records = history::parse(history_json).expect("history");
    let from = records[0].envelope().expect("envelope").stream.to_string();
    let to = to.to_string();
    let finder = memchr::memmem::Finder::new(from.as_bytes());
    let mut prev = Hash::ZERO;
    let mut out = Vec::new();
    for r in records.iter().take(take) {
        let mut b = r.event.get().as_bytes().to_vec();
        let spots: Vec<usize> = finder.find_iter(&b).collect();
        for s in spots {
            b[s..s + 36].copy_from_slice(to.as_bytes());
        }
        let mut hex = [0u8; 64];
        prev.write_hex(&mut hex);
        b[9..73].copy_from_slice(&hex);
        let h = Hash::of(&b);
        out.push((h, b));
        prev = h;
    }
    out
}

/// The i-th payment id of a generated export (ascending with i).
pub fn payment_id(i: u64) -> PaymentId {
    // Bytes 0..6 carry i (so ids ascend with i); then a v4-looking version and variant.
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&i.to_be_bytes()[2..]);
    b[6] = 0x40;
    b[8] = 0x80;
    PaymentId::from_bytes(b)
}

/// Writes an export of exactly `events` events (the vectors cloned round-robin under
/// new payment ids, the last one cut short to fit) and its heads, signed with
/// [`SECRET`]. Returns (payments, events).
pub fn write_export(events_path: &Path, heads_path: &Path, events: u64) -> (u64, u64) {
    let sources = valid_histories();
    let lens: Vec<usize> = sources
        .iter()
        .map(|(_, h)| history::parse(h).expect("parse").len())
        .collect();
    let mut w = ExportWriter::create(events_path, Some(heads_path)).expect("create");
    let (mut written, mut i) = (0u64, 0u64);
    while written < events {
        let k = (i as usize) % sources.len();
        let take = lens[k].min((events - written) as usize);
        let id = payment_id(i);
        let evs = restream(&sources[k].1, id, take);
        let last = evs.last().expect("events").0;
        let head = SignedHead::sign(id, take as u64, last, &SECRET);
        let sealed: Vec<trustfold::envelope::SealedEvent> = evs
            .into_iter()
            .map(|(hash, body)| trustfold::envelope::SealedEvent { hash, body })
            .collect();
        w.write_sealed(id, &sealed, Some(&head)).expect("write");
        written += take as u64;
        i += 1;
    }
    w.finish().expect("finish")
}
