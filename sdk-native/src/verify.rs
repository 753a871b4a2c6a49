//! The offline verifier: checks a history file, or a whole multi-payment export, with
//! memory that stays flat however long the file is.
//!
//! It checks everything [`fold::verify_and_replay`] checks, and reports the same error
//! (code and message) for the same input: every event's bytes hash to its recorded
//! hash, every `prev` is the previous event's hash (all zeros first), the server's
//! signed head verifies against the pinned key and matches the event at its sequence
//! number, and the events fold into a valid state with the core. On failure, [`Error::Broken`] says which payment, which event
//! (sequence number) and which line of the file.
//!
//! # Layouts
//!
//! - **A history** as trustfold writes it: a JSON array, one record per line
//!   (`[`, then `{"hash":"…","event":{…}}` lines separated by `,`, then `]`). Read line by
//!   line.
//! - **An export** (see [`crate::export`]): NDJSON, one record per line, the events of
//!   many payments grouped by payment (each payment's events in order from seq 1), the
//!   payments in ascending order of id; optionally a heads file with one signed head
//!   per payment in the same order. Read line by line, the heads file alongside.
//! - **Anything else** that is valid JSON for a history (pretty-printed, all on one
//!   line, …): the whole file is read into memory and checked by the core. Memory is
//!   then proportional to the file; trustfold never writes such files.
//!
//! # How it runs
//!
//! One thread reads the file in 1 MiB chunks, splits lines, hashes each event and
//! checks the chain and each payment's signed head; for an export, another thread reads
//! the heads file ahead and batch-verifies the signatures. Payments go round-robin to
//! folding threads (one per core, at least two) that parse the events and fold them
//! with the core, each parsing a policy embedded in many payments only once (a
//! [`PolicyCache`]); the calling thread takes the results back in file order. Only the
//! current payment's state is kept per folding thread, and bounded queues sit between
//! the threads, so memory does not grow with the file.
//!
//! Within one payment the order of checks is the core's: a broken chain is reported
//! before a bad signed head, which is reported before an event that does not fold, even
//! when the event that does not fold comes first. Across payments the first failing
//! payment in file order is reported.
//!
//! ```
//! use trustfold::verify::Verifier;
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("h.json");
//! # std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/vectors/em_happy_wire.history.json"), &path)?;
//! let key = "2152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db12".parse()?;
//! let report = Verifier::new().key(key).verify_path(&path)?;
//! assert_eq!(report.events, 25);
//! assert_eq!(report.last.as_ref().map(|s| s.version), Some(25));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use uuid::Uuid;

use crate::envelope::Envelope;
use crate::error::{Broken, Error, Result};
use crate::event::PolicyCache;
use crate::fold;
use crate::hash::Hash;
use crate::history::{self, PublicKey, SignedHead};
use crate::id::PaymentId;
use crate::state::{PaymentState, Status};
use crate::CoreError;

const CHUNK: usize = 1 << 20;
const QUEUE: usize = 4;

/// A callback told how many bytes of the file have been read so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// How the file was laid out (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A JSON array, one record per line: streamed.
    History,
    /// NDJSON records of many payments: streamed.
    Export,
    /// Another JSON layout: read whole and checked by the core.
    Whole,
}

/// What a successful verification found.
#[derive(Clone, Debug)]
pub struct Report {
    /// How the file was read.
    pub layout: Layout,
    /// Payments verified.
    pub payments: u64,
    /// Events verified.
    pub events: u64,
    /// Payments whose signed head was checked.
    pub signed: u64,
    /// Bytes read.
    pub bytes: u64,
    /// How many payments ended in each status.
    pub statuses: BTreeMap<Status, u64>,
    /// The state of the last payment folded (the only one, for a history; the
    /// selected one with [`Verifier::payment`]; folded up to [`Verifier::at`]).
    pub last: Option<PaymentState>,
}

#[derive(Clone)]
enum Heads {
    None,
    One(SignedHead),
    File(PathBuf),
}

/// Verifies history files and exports. See the [module docs](self).
#[derive(Clone)]
pub struct Verifier {
    key: Option<PublicKey>,
    heads: Heads,
    at: Option<u64>,
    payment: Option<PaymentId>,
    progress: Option<Progress>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("key", &self.key)
            .field("at", &self.at)
            .field("payment", &self.payment)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with no pinned key and no signed heads: it checks the chain and the
    /// fold only.
    pub fn new() -> Self {
        Verifier {
            key: None,
            heads: Heads::None,
            at: None,
            payment: None,
            progress: None,
        }
    }

    /// Pins the server's public key (needed to check signed heads).
    pub fn key(mut self, key: PublicKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Checks one signed head (for a single history).
    pub fn head(mut self, head: SignedHead) -> Self {
        self.heads = Heads::One(head);
        self
    }

    /// Checks the signed heads in a file: one JSON head (for a history) or NDJSON heads,
    /// one per payment in ascending payment order (for an export).
    pub fn heads_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.heads = Heads::File(path.into());
        self
    }

    /// Folds only up to this sequence number (the chain is still checked to the end).
    pub fn at(mut self, seq: u64) -> Self {
        self.at = Some(seq);
        self
    }

    /// In an export, checks and folds only this payment.
    pub fn payment(mut self, payment: PaymentId) -> Self {
        self.payment = Some(payment);
        self
    }

    /// Reports progress (bytes read) as the file is read.
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Verifies a file; see [`Verifier::for_each_payment`] to see every payment's state.
    pub fn verify_path(&self, path: impl AsRef<Path>) -> Result<Report> {
        self.for_each_payment(path, |_| Ok(()))
    }

    /// Verifies a file and hands each verified payment's final state to `f`, in file
    /// order, as soon as it is verified (so a caller can build its own projection from
    /// an export in one pass, with flat memory). An error from `f` stops the run.
    pub fn for_each_payment<F>(&self, path: impl AsRef<Path>, mut f: F) -> Result<Report>
    where
        F: FnMut(&PaymentState) -> Result<()>,
    {
        let path = path.as_ref();
        if !matches!(self.heads, Heads::None) && self.key.is_none() {
            return Err(Error::Core(CoreError::InvalidKey(
                "a signed head is checked against the server's public key: pass the key".into(),
            )));
        }
        // The file is read twice (its start to tell the layout, then the whole): a pipe
        // would lose what the first read took and be judged on the rest.
        if let Heads::File(h) = &self.heads {
            // A directory opens on Linux and fails only when read, which would be
            // reported against a payment instead of as the usage error it is.
            let meta = std::fs::metadata(h).map_err(|e| Error::io(h, e))?;
            if !meta.is_file() {
                return Err(Error::Usage(format!(
                    "--head {}: not a regular file (a pipe, device or directory)",
                    h.display()
                )));
            }
        }
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::Usage(format!(
                "{}: not a regular file (a pipe, device or directory): save it to a file \
                 and verify that",
                path.display()
            )));
        }
        let layout = sniff(path)?;
        if layout == Layout::Whole {
            return self.whole(path, &mut f);
        }
        let mut heads_file = None;
        let heads = match (&self.heads, layout) {
            (Heads::None, _) => HeadSource::None,
            (Heads::One(h), _) => HeadSource::One(Some(h.clone())),
            (Heads::File(p), Layout::History) => HeadSource::One(Some(read_one_head(p)?)),
            (Heads::File(p), _) => {
                let (tx, rx) = sync_channel::<HeadsBlock>(2 * HEADS_BLOCKS);
                heads_file = Some((HeadsFile::open(p, self.key)?, tx));
                HeadSource::File(Box::new(HeadsReader {
                    blocks: rx,
                    ahead: Default::default(),
                }))
            }
        };
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let scanner = Scanner {
            layout,
            key: self.key,
            vk: self
                .key
                .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k.0).ok()),
            heads,
            payment: self.payment,
            progress: self.progress.clone(),
            path: path.to_path_buf(),
        };
        let folders = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(folders * (QUEUE + 2));
        let mut job_txs = Vec::new();
        let mut job_rxs = Vec::new();
        for _ in 0..folders {
            let (tx, rx) = sync_channel::<Batch>(QUEUE);
            job_txs.push(tx);
            job_rxs.push(rx);
        }
        let at = self.at;
        let outcome = std::thread::scope(|scope| {
            let spawn_err = |e| Error::io(path, e);
            let reader = std::thread::Builder::new()
                .name("trustfold-read".into())
                .spawn_scoped(scope, move || scanner.run(file, job_txs, free_rx))
                .map_err(spawn_err)?;
            if let Some((heads, tx)) = heads_file {
                std::thread::Builder::new()
                    .name("trustfold-heads".into())
                    .spawn_scoped(scope, move || heads.run(tx))
                    .map_err(spawn_err)?;
            }
            let mut results = Vec::new();
            for (i, rx) in job_rxs.into_iter().enumerate() {
                // Unbounded: a folder never waits for the merger, so the reader never
                // waits forever on a folder (memory stays bounded by the job queues).
                let (res_tx, res_rx) = std::sync::mpsc::channel::<Outcome>();
                let free = free_tx.clone();
                std::thread::Builder::new()
                    .name(format!("trustfold-fold-{i}"))
                    .spawn_scoped(scope, move || fold_batches(rx, free, at, res_tx))
                    .map_err(spawn_err)?;
                results.push(res_rx);
            }
            drop(free_tx);
            let merged = merge(&results, layout, &mut f);
            drop(results);
            let read = reader
                .join()
                .unwrap_or_else(|_| Err(Error::Usage("the reader thread panicked".into())));
            Ok::<_, Error>((merged, read))
        })?;
        match outcome {
            (Ok(None), _) => self.whole(path, &mut f),
            (Ok(Some(mut report)), read) => {
                report.bytes = read?;
                report.layout = layout;
                let found = report.last.as_ref().map(|s| s.payment);
                if self.payment.is_some() && (report.payments == 0 || found != self.payment) {
                    return Err(Error::Usage(format!(
                        "payment {} is not in {}",
                        self.payment.map(|p| p.to_string()).unwrap_or_default(),
                        path.display()
                    )));
                }
                Ok(report)
            }
            (Err(e), read) => {
                // An I/O error of the reader explains a cut-short stream best.
                read?;
                Err(e)
            }
        }
    }

    /// The fallback: the whole file through the core.
    fn whole<F>(&self, path: &Path, f: &mut F) -> Result<Report>
    where
        F: FnMut(&PaymentState) -> Result<()>,
    {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if let Some(p) = &self.progress {
            p(bytes.len() as u64);
        }
        let head = match &self.heads {
            Heads::None => None,
            Heads::One(h) => Some(h.clone()),
            Heads::File(p) => Some(read_one_head(p)?),
        };
        let broken = |error: CoreError| {
            Error::from(Broken {
                stream: None,
                seq: error.seq(),
                line: None,
                error,
            })
        };
        let records = history::parse(&bytes).map_err(broken)?;
        let state = if self.at.is_none() {
            fold::verify_and_replay(&bytes, head.as_ref(), self.key.as_ref())
        } else {
            history::verify_chain(&records)
                .and_then(|_| match (&head, &self.key) {
                    (Some(h), Some(k)) => h.verify_against(k, &records),
                    _ => Ok(()),
                })
                .and_then(|_| fold::replay_records(&records, self.at))
        }
        .map_err(|error| {
            let stream = records
                .first()
                .and_then(|r| r.envelope().ok())
                .map(|e| e.stream);
            Error::from(Broken {
                stream,
                seq: error.seq(),
                line: None,
                error,
            })
        })?;
        if self.payment.is_some_and(|p| p != state.payment) {
            return Err(Error::Usage(format!(
                "payment {} is not in {} (it holds payment {})",
                self.payment.map(|p| p.to_string()).unwrap_or_default(),
                path.display(),
                state.payment
            )));
        }
        f(&state)?;
        let mut statuses = BTreeMap::new();
        statuses.insert(state.status, 1);
        Ok(Report {
            layout: Layout::Whole,
            payments: 1,
            events: records.len() as u64,
            signed: u64::from(head.is_some()),
            bytes: bytes.len() as u64,
            statuses,
            last: Some(state),
        })
    }
}

/// Looks at the first non-blank line.
fn sniff(path: &Path) -> Result<Layout> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r
            .by_ref()
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            // An empty file: let the core say so.
            return Ok(Layout::Whole);
        }
        let t = line.trim_ascii();
        if t.is_empty() {
            continue;
        }
        return Ok(if t == b"[" {
            Layout::History
        } else if t.starts_with(b"{\"hash\":") {
            Layout::Export
        } else {
            Layout::Whole
        });
    }
}

fn read_one_head(path: &Path) -> Result<SignedHead> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut heads = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str::<SignedHead>);
    match (heads.next(), heads.next()) {
        (Some(Ok(h)), None) => Ok(h),
        (Some(Ok(_)), Some(_)) => Err(Error::Usage(format!(
            "{}: a single history takes one signed head, the file has several",
            path.display()
        ))),
        // Not one head per line: maybe one pretty-printed head.
        _ => serde_json::from_str(&text).map_err(|e| {
            Error::Usage(format!(
                "{}: not a signed head ({{\"stream\",\"seq\",\"hash\",\"signature\"}}): {e}",
                path.display()
            ))
        }),
    }
}

/// Signed heads read one per line, in ascending payment order, in blocks of
/// [`HEADS_BATCH`]: a malformed or out-of-order line fails its whole block, when the
/// verifier comes to that block. Run on its own thread ([`HeadsFile::run`]), which
/// reads ahead and checks the signatures of several blocks in one Ed25519 batch (about
/// twice as fast per signature as one by one, and faster the larger the batch).
struct HeadsFile {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line: u64,
    last: Option<PaymentId>,
    vk: Option<ed25519_dalek::VerifyingKey>,
    done: bool,
}

/// Heads per block (the unit in which a bad line fails).
const HEADS_BATCH: usize = 128;
/// Blocks whose signatures are checked in one batch.
const HEADS_BLOCKS: usize = 8;

/// A block of heads in file order, each with whether its signature is already known
/// to verify; or the error that failed the block.
type HeadsBlock = Result<Vec<(SignedHead, bool)>>;

impl HeadsFile {
    fn open(path: &Path, key: Option<PublicKey>) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(HeadsFile {
            path: path.to_path_buf(),
            lines: BufReader::new(file).lines(),
            line: 0,
            last: None,
            vk: key.and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k.0).ok()),
            done: false,
        })
    }

    /// The next block (empty at the end of the file).
    fn block(&mut self) -> Result<Vec<SignedHead>> {
        let mut fresh = Vec::new();
        while fresh.len() < HEADS_BATCH && !self.done {
            let Some(l) = self.lines.next() else {
                self.done = true;
                break;
            };
            self.line += 1;
            let l = l.map_err(|e| Error::io(&self.path, e))?;
            if l.trim().is_empty() {
                continue;
            }
            let h: SignedHead = serde_json::from_str(&l).map_err(|e| {
                Error::Usage(format!(
                    "{} line {}: not a signed head: {e}",
                    self.path.display(),
                    self.line
                ))
            })?;
            if self.last.is_some_and(|p| p >= h.stream) {
                return Err(Error::Usage(format!(
                    "{} line {}: heads must be in ascending payment order, one per payment ({} after {})",
                    self.path.display(),
                    self.line,
                    h.stream,
                    self.last.map(|p| p.to_string()).unwrap_or_default()
                )));
            }
            self.last = Some(h.stream);
            fresh.push(h);
        }
        Ok(fresh)
    }

    /// Reads blocks ahead and sends them in order until the file ends or the verifier
    /// stops listening.
    fn run(mut self, tx: SyncSender<HeadsBlock>) {
        while !self.done {
            let mut blocks = Vec::new();
            let mut failed = None;
            while blocks.len() < HEADS_BLOCKS && !self.done {
                match self.block() {
                    Ok(b) if b.is_empty() => {}
                    Ok(b) => blocks.push(b),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let all: Vec<&SignedHead> = blocks.iter().flatten().collect();
            let ok = batch_verify(self.vk.as_ref(), &all);
            for b in blocks {
                if tx
                    .send(Ok(b.into_iter().map(|h| (h, ok)).collect()))
                    .is_err()
                {
                    return;
                }
            }
            if let Some(e) = failed {
                if tx.send(Err(e)).is_err() {
                    return;
                }
            }
        }
    }
}

/// The verifier's side of [`HeadsFile`]: the blocks as they come.
struct HeadsReader {
    blocks: Receiver<HeadsBlock>,
    ahead: std::collections::VecDeque<(SignedHead, bool)>,
}

impl HeadsReader {
    fn peek(&mut self) -> Result<Option<&SignedHead>> {
        if self.ahead.is_empty() {
            // A closed channel: the file ended.
            if let Ok(block) = self.blocks.recv() {
                self.ahead.extend(block?);
            }
        }
        Ok(self.ahead.front().map(|(h, _)| h))
    }

    fn take(&mut self) -> Option<(SignedHead, bool)> {
        self.ahead.pop_front()
    }
}

/// `true` when every head's signature verifies (then no head needs checking again).
fn batch_verify(vk: Option<&ed25519_dalek::VerifyingKey>, heads: &[&SignedHead]) -> bool {
    let Some(vk) = vk else { return false };
    let mut msgs = Vec::with_capacity(heads.len());
    let mut sigs = Vec::with_capacity(heads.len());
    for h in heads {
        let Some(sig) = signature_bytes(h) else {
            return false;
        };
        msgs.push(SignedHead::message(h.stream, h.seq, h.hash));
        sigs.push(ed25519_dalek::Signature::from_bytes(&sig));
    }
    let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
    let keys = vec![*vk; heads.len()];
    !heads.is_empty() && ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok()
}

fn signature_bytes(h: &SignedHead) -> Option<[u8; 64]> {
    let raw = h.signature.as_bytes();
    if raw.len() != 128 {
        return None;
    }
    let mut sig = [0u8; 64];
    for (i, half) in raw.chunks_exact(64).enumerate() {
        sig[i * 32..i * 32 + 32].copy_from_slice(&Hash::from_hex(half)?.0);
    }
    Some(sig)
}

enum HeadSource {
    None,
    One(Option<SignedHead>),
    File(Box<HeadsReader>),
}

/// One record's place in its batch's buffer.
struct Rec {
    start: usize,
    end: usize,
    hash: Hash,
    line: u64,
}

/// The verdict of the reader on one payment, sent after its events.
struct GroupEnd {
    stream: Option<PaymentId>,
    chain: Option<(CoreError, Option<u64>)>,
    head: Option<(CoreError, Option<u64>)>,
    signed: bool,
}

enum Item {
    Begin,
    Event(Rec),
    End(Box<GroupEnd>),
    Fatal(Box<Broken>),
    /// Not the one-record-per-line layout after all: use the whole-file path.
    Fallback,
}

struct Batch {
    buf: Vec<u8>,
    items: Vec<Item>,
}

/// The reader side of the pipeline: lines, hashes, chain, heads.
struct Scanner {
    layout: Layout,
    key: Option<PublicKey>,
    vk: Option<ed25519_dalek::VerifyingKey>,
    heads: HeadSource,
    payment: Option<PaymentId>,
    progress: Option<Progress>,
    path: PathBuf,
}

/// The reader's running view of the current payment.
struct Group {
    stream: Option<PaymentId>,
    count: u64,
    prev: Hash,
    /// `prev` as 64 hex digits, when known as written (so the next event's `prev` is
    /// compared as text, without decoding it).
    prev_hex: Option<[u8; 64]>,
    head: Option<SignedHead>,
    /// The head's signature is already known to verify.
    head_ok: bool,
    head_err: Option<(CoreError, Option<u64>)>,
    head_line: Option<u64>,
    selected: bool,
}

impl Group {
    fn new(stream: Option<PaymentId>, selected: bool) -> Self {
        Group {
            stream,
            count: 0,
            prev: Hash::ZERO,
            prev_hex: Some([b'0'; 64]),
            head: None,
            head_ok: false,
            head_err: None,
            head_line: None,
            selected,
        }
    }
}

/// Array-layout bookkeeping.
#[derive(PartialEq)]
enum ArrayState {
    Open,
    AfterComma,
    AfterLast,
    Closed,
}

/// Routes each payment to a folder (payment k to folder k mod n) and every outcome
/// (a payment's end, a failure, a fallback) to the folder whose turn it is, so the
/// merger can take the outcomes back in order.
struct Router {
    outs: Vec<Batch>,
    next: usize,
    cur: usize,
}

impl Router {
    fn new(n: usize) -> Self {
        Router {
            outs: (0..n)
                .map(|_| Batch {
                    buf: Vec::new(),
                    items: Vec::new(),
                })
                .collect(),
            next: 0,
            cur: 0,
        }
    }

    fn begin(&mut self) {
        self.cur = self.next % self.outs.len();
        self.outs[self.cur].items.push(Item::Begin);
    }

    fn event(&mut self, bytes: &[u8], hash: Hash, line: u64, free: &Receiver<Vec<u8>>) {
        let b = &mut self.outs[self.cur];
        if b.buf.capacity() == 0 {
            b.buf = free
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            b.buf.clear();
        }
        let start = b.buf.len();
        b.buf.extend_from_slice(bytes);
        b.items.push(Item::Event(Rec {
            start,
            end: b.buf.len(),
            hash,
            line,
        }));
    }

    fn end(&mut self, item: Item) {
        self.outs[self.cur].items.push(item);
        self.next += 1;
    }

    fn outcome(&mut self, item: Item) {
        let i = self.next % self.outs.len();
        self.outs[i].items.push(item);
        self.next += 1;
    }

    /// Sends what each folder has; `false` when a folder has stopped. Every folder is
    /// sent to even then: the outcomes before a failure must all reach the merger.
    fn flush(&mut self, txs: &[SyncSender<Batch>]) -> bool {
        let mut all = true;
        for (b, tx) in self.outs.iter_mut().zip(txs) {
            if b.items.is_empty() {
                continue;
            }
            let batch = std::mem::replace(
                b,
                Batch {
                    buf: Vec::new(),
                    items: Vec::with_capacity(4096),
                },
            );
            all &= tx.send(batch).is_ok();
        }
        all
    }
}

impl Scanner {
    /// Reads the whole file; returns the bytes read.
    fn run(
        mut self,
        mut file: File,
        txs: Vec<SyncSender<Batch>>,
        free: Receiver<Vec<u8>>,
    ) -> Result<u64> {
        let mut rt = Router::new(txs.len());
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + CHUNK / 4);
        let mut total = 0u64;
        let mut line_no = 0u64;
        let mut carry: Vec<u8> = Vec::new();
        let mut group: Option<Group> = None;
        let mut array = ArrayState::Open;
        let mut seen_open = false;
        let mut stopped = false;
        let mut eof = false;
        while !eof && !stopped {
            buf.clear();
            buf.extend_from_slice(&carry);
            carry.clear();
            // Fill to CHUNK (more when one line is longer than a chunk).
            loop {
                let want = CHUNK.max(buf.len() + CHUNK / 4);
                let old = buf.len();
                buf.resize(want, 0);
                let n =
                    read_some(&mut file, &mut buf[old..]).map_err(|e| Error::io(&self.path, e))?;
                buf.truncate(old + n);
                total += n as u64;
                if n == 0 {
                    eof = true;
                    break;
                }
                if buf.len() >= CHUNK && memchr::memrchr(b'\n', &buf[old..]).is_some() {
                    break;
                }
            }
            if let Some(p) = &self.progress {
                p(total);
            }
            let cut = if eof {
                buf.len()
            } else {
                memchr::memrchr(b'\n', &buf).map_or(buf.len(), |i| i + 1)
            };
            carry.extend_from_slice(&buf[cut..]);
            let mut pos = 0;
            while pos < cut && !stopped {
                let end = memchr::memchr(b'\n', &buf[pos..cut]).map_or(cut, |i| pos + i);
                line_no += 1;
                let (ls, le) = trim_range(&buf, pos, end);
                pos = end + 1;
                if ls == le {
                    continue;
                }
                let mut line = &buf[ls..le];
                if self.layout == Layout::History {
                    if !seen_open {
                        seen_open = true; // sniff saw `[`
                        continue;
                    }
                    match array {
                        ArrayState::Open | ArrayState::AfterComma if line != b"]" => {}
                        ArrayState::Open | ArrayState::AfterLast if line == b"]" => {
                            array = ArrayState::Closed;
                            continue;
                        }
                        _ => {
                            rt.outcome(Item::Fallback);
                            stopped = true;
                            continue;
                        }
                    }
                    if let Some(stripped) = line.strip_suffix(b",") {
                        line = stripped;
                        array = ArrayState::AfterComma;
                    } else {
                        array = ArrayState::AfterLast;
                    }
                }
                let Some((hash, hex, es, ee)) = record(line) else {
                    if self.layout == Layout::History {
                        rt.outcome(Item::Fallback);
                    } else {
                        let msg = serde_json::from_slice::<history::RawRecord<'_>>(line)
                            .err()
                            .map_or_else(|| "not a record".to_string(), |e| e.to_string());
                        rt.outcome(Item::Fatal(Box::new(Broken {
                            stream: group.as_ref().and_then(|g| g.stream),
                            seq: None,
                            line: Some(line_no),
                            error: CoreError::MalformedJson(format!(
                                "not a record {{\"hash\",\"event\"}}: {msg}"
                            )),
                        })));
                    }
                    stopped = true;
                    continue;
                };
                let (es, ee) = (ls + es, ls + ee);
                let event = &buf[es..ee];
                // Which payment?
                if self.layout == Layout::Export {
                    let Some(stream) = stream_of(event) else {
                        rt.outcome(Item::Fatal(Box::new(Broken {
                            stream: None,
                            seq: None,
                            line: Some(line_no),
                            error: CoreError::MalformedJson(
                                "cannot read the event's `stream`".into(),
                            ),
                        })));
                        stopped = true;
                        continue;
                    };
                    if group.as_ref().and_then(|g| g.stream) != Some(stream) {
                        if let Some(g) = group.take() {
                            let prev_stream = g.stream;
                            if g.selected {
                                rt.end(Item::End(Box::new(self.finish(g))));
                            }
                            if prev_stream.is_some_and(|p| p > stream) {
                                rt.outcome(Item::Fatal(Box::new(Broken {
                                    stream: Some(stream),
                                    seq: None,
                                    line: Some(line_no),
                                    error: CoreError::MalformedJson(format!(
                                        "an export lists each payment once, in ascending id order: {stream} comes after {}",
                                        prev_stream.map(|p| p.to_string()).unwrap_or_default()
                                    )),
                                })));
                                stopped = true;
                                continue;
                            }
                            if self.payment.is_some_and(|p| p < stream) {
                                // Past the selected payment: done.
                                stopped = true;
                                continue;
                            }
                        }
                        let selected = self.payment.is_none_or(|p| p == stream);
                        let mut g = Group::new(Some(stream), selected);
                        if selected {
                            match self.head_for(&mut g) {
                                Ok(Some(fatal)) => {
                                    rt.outcome(Item::Fatal(Box::new(fatal)));
                                    stopped = true;
                                    continue;
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    rt.outcome(Item::Fatal(Box::new(Broken {
                                        stream: Some(stream),
                                        seq: None,
                                        line: None,
                                        error: CoreError::MalformedJson(e.to_string()),
                                    })));
                                    stopped = true;
                                    continue;
                                }
                            }
                            rt.begin();
                        }
                        group = Some(g);
                    }
                } else if group.is_none() {
                    let mut g = Group::new(stream_of(event), true);
                    if let HeadSource::One(h) = &mut self.heads {
                        g.head = h.take();
                        self.check_signature(&mut g);
                        // Another payment's head, validly signed: named as such, as the
                        // core's `SignedHead::verify_against` does, not misread as
                        // events cut from (or added to) this history's end.
                        if let (Some(h), Some(stream), None) = (&g.head, g.stream, &g.head_err) {
                            if let Err(e) = h.check_payment(stream) {
                                g.head_err = Some((e, None));
                            }
                        }
                    }
                    rt.begin();
                    group = Some(g);
                }
                let Some(g) = group.as_mut() else { continue };
                if !g.selected {
                    continue;
                }
                g.count += 1;
                let seq = g.count;
                if let Some(err) = chain_step(g, hash, hex, event) {
                    let g = group.take();
                    if let Some(g) = g {
                        let mut end = self.finish(g);
                        end.chain = Some((err, Some(line_no)));
                        rt.end(Item::End(Box::new(end)));
                    }
                    stopped = true;
                    continue;
                }
                if g.head
                    .as_ref()
                    .is_some_and(|h| h.seq == seq && Some(h.stream) == g.stream)
                {
                    g.head_line = Some(line_no);
                    if g.head.as_ref().is_some_and(|h| h.hash != hash) && g.head_err.is_none() {
                        g.head_err = Some((
                            CoreError::ChainBroken {
                                seq,
                                reason:
                                    "the event at the signed seq differs from the one the server signed"
                                        .into(),
                            },
                            Some(line_no),
                        ));
                    }
                }
                rt.event(event, hash, line_no, &free);
            }
            if eof && !stopped {
                if self.layout == Layout::History && array != ArrayState::Closed {
                    rt.outcome(Item::Fallback);
                    stopped = true;
                } else {
                    match group.take() {
                        Some(g) if g.selected => {
                            rt.end(Item::End(Box::new(self.finish(g))));
                        }
                        Some(_) => {}
                        None if self.payment.is_none() => {
                            // Nothing at all: a history with no events.
                            rt.begin();
                            let g = Group::new(None, true);
                            let mut end = self.finish(g);
                            end.chain = Some((
                                CoreError::InvalidHistory {
                                    seq: 1,
                                    reason: "empty history".into(),
                                },
                                None,
                            ));
                            rt.end(Item::End(Box::new(end)));
                        }
                        None => {}
                    }
                    // Heads left over belong to payments missing from the export.
                    if self.payment.is_none() {
                        if let Some(fatal) = self.leftover_head(None) {
                            rt.outcome(Item::Fatal(Box::new(fatal)));
                        }
                    }
                }
            }
            if !rt.flush(&txs) {
                break; // a folder stopped: the run is decided
            }
        }
        Ok(total)
    }

    /// Takes the signed head for a new export group; heads before it are payments
    /// missing from the export (or, with a payment selected, other payments' heads,
    /// passed over). A single head given for an export is the head of the payment it
    /// names; every other payment in the export then has none.
    fn head_for(&mut self, g: &mut Group) -> Result<Option<Broken>> {
        let stream = g.stream;
        let source = match &mut self.heads {
            HeadSource::None => return Ok(None),
            HeadSource::One(h) => {
                if h.as_ref().is_some_and(|h| Some(h.stream) == stream) {
                    g.head = h.take();
                }
                "no signed head was given for it"
            }
            HeadSource::File(r) => {
                while let Some(h) = r.peek()? {
                    if Some(h.stream) >= stream {
                        break;
                    }
                    let h = r.take();
                    if self.payment.is_none() {
                        return Ok(h.map(|(h, _)| removed_payment(&h)));
                    }
                }
                if let Some(h) = r.peek()? {
                    if Some(h.stream) == stream {
                        if let Some((h, ok)) = r.take() {
                            g.head = Some(h);
                            g.head_ok = ok;
                        }
                    }
                }
                "it has no signed head in the heads file"
            }
        };
        if g.head.is_none() {
            g.head_err = Some((
                CoreError::BadSignature(format!(
                    "payment {}: {source}, so nothing shows the server wrote it",
                    stream.map(|p| p.to_string()).unwrap_or_default()
                )),
                None,
            ));
        }
        self.check_signature(g);
        Ok(None)
    }

    fn leftover_head(&mut self, _: Option<()>) -> Option<Broken> {
        match &mut self.heads {
            // A single head for a payment the export does not hold.
            HeadSource::One(h) => h.take().map(|h| removed_payment(&h)),
            HeadSource::None => None,
            HeadSource::File(r) => match r.peek() {
                Ok(Some(_)) => r.take().map(|(h, _)| removed_payment(&h)),
                Ok(None) => None,
                Err(e) => Some(Broken {
                    stream: None,
                    seq: None,
                    line: None,
                    error: CoreError::MalformedJson(e.to_string()),
                }),
            },
        }
    }

    fn check_signature(&self, g: &mut Group) {
        if let (Some(h), Some(k)) = (&g.head, &self.key) {
            // Fast path with the key decoded once; the core says why when it fails.
            if !g.head_ok && !fast_verify(self.vk.as_ref(), h) {
                if let Err(e) = h.verify(k) {
                    g.head_err = Some((e, None));
                }
            }
        }
    }

    fn finish(&self, mut g: Group) -> GroupEnd {
        if let Some(h) = &g.head {
            if g.head_err.is_none() && (h.seq > g.count || h.seq == 0) {
                g.head_err = Some((
                    CoreError::ChainBroken {
                        seq: h.seq,
                        reason: format!(
                            "the signed head is at seq {} but the history has only {} events: events were removed from its end",
                            h.seq, g.count
                        ),
                    },
                    None,
                ));
            } else if g.head_err.is_none() && h.seq < g.count {
                g.head_err = Some((
                    CoreError::ChainBroken {
                        seq: h.seq + 1,
                        reason: trustfold_core::history::unsigned_after(h.seq, g.count),
                    },
                    None,
                ));
            }
        }
        if let Some((_, line)) = &mut g.head_err {
            if line.is_none() {
                *line = g.head_line;
            }
        }
        GroupEnd {
            stream: g.stream,
            chain: None,
            signed: g.head.is_some(),
            head: g.head_err,
        }
    }
}

/// Verifies a head with an already decoded key: `true` when it certainly verifies.
fn fast_verify(vk: Option<&ed25519_dalek::VerifyingKey>, h: &SignedHead) -> bool {
    use ed25519_dalek::Verifier as _;
    match (vk, signature_bytes(h)) {
        (Some(vk), Some(sig)) => vk
            .verify(
                &SignedHead::message(h.stream, h.seq, h.hash),
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .is_ok(),
        _ => false,
    }
}

fn removed_payment(h: &SignedHead) -> Broken {
    Broken {
        stream: Some(h.stream),
        seq: Some(h.seq),
        line: None,
        error: CoreError::ChainBroken {
            seq: h.seq,
            reason: format!(
                "the signed head is at seq {} but the history has only 0 events: events were removed from its end",
                h.seq
            ),
        },
    }
}

/// One step of the hash chain, with the core's messages. `recorded_hex` is the record's
/// hash as written, when the record was read by the fast path.
fn chain_step(
    g: &mut Group,
    recorded: Hash,
    recorded_hex: Option<[u8; 64]>,
    event: &[u8],
) -> Option<CoreError> {
    let seq = g.count;
    let actual = Hash::of(event);
    if actual != recorded {
        return Some(CoreError::ChainBroken {
            seq,
            reason: format!(
                "event bytes hash to {actual}, the record says {recorded}: the event was altered"
            ),
        });
    }
    // The same digits as the previous record's hash decode to the same hash.
    let same_text = g.prev_hex.is_some_and(|hex| {
        event.len() > PREV.len() + 65
            && event.starts_with(PREV)
            && event[PREV.len()..PREV.len() + 64] == hex
            && event[PREV.len() + 64] == b'"'
    });
    let claimed = if same_text {
        g.prev
    } else {
        match prev_of(event) {
            Ok(p) => p,
            Err(e) => {
                return Some(CoreError::ChainBroken {
                    seq,
                    reason: format!("cannot read prev: {e}"),
                })
            }
        }
    };
    if claimed != g.prev {
        return Some(CoreError::ChainBroken {
            seq,
            reason: if seq == 1 {
                "the first event's prev is not all zeros: events before it were removed".into()
            } else {
                format!(
                    "prev is {claimed} but the event before it hashes to {}: an event was removed, inserted or reordered here",
                    g.prev
                )
            },
        });
    }
    g.prev = recorded;
    g.prev_hex = recorded_hex;
    None
}

const PREV: &[u8] = b"{\"prev\":\"";
const STREAM: &[u8] = b"\",\"stream\":\"";

fn prev_of(event: &[u8]) -> std::result::Result<Hash, CoreError> {
    if event.len() > PREV.len() + 65 && event.starts_with(PREV) && event[PREV.len() + 64] == b'"' {
        if let Some(h) = Hash::from_hex(&event[PREV.len()..PREV.len() + 64]) {
            return Ok(h);
        }
    }
    #[derive(serde::Deserialize)]
    struct PrevOnly {
        prev: Hash,
    }
    serde_json::from_slice::<PrevOnly>(event)
        .map(|p| p.prev)
        .map_err(CoreError::from)
}

/// The payment an event belongs to, read from the canonical prefix (or by parsing).
fn stream_of(event: &[u8]) -> Option<PaymentId> {
    let s = PREV.len() + 64 + STREAM.len();
    if event.len() > s + 37 && event.starts_with(PREV) && &event[PREV.len() + 64..s] == STREAM {
        if let Ok(u) = Uuid::try_parse_ascii(&event[s..s + 36]) {
            return Some(PaymentId::from_uuid(u));
        }
    }
    #[derive(serde::Deserialize)]
    struct StreamOnly {
        stream: PaymentId,
    }
    serde_json::from_slice::<StreamOnly>(event)
        .ok()
        .map(|s| s.stream)
}

const REC: &[u8] = b"{\"hash\":\"";
const EV: &[u8] = b"\",\"event\":";

/// Splits a record line into its hash (and its hex digits, on the fast path) and the
/// event's byte range (relative to the line). The fast path reads trustfold's own
/// layout; anything else goes through serde.
fn record(line: &[u8]) -> Option<(Hash, Option<[u8; 64]>, usize, usize)> {
    let ev = REC.len() + 64 + EV.len();
    if line.len() > ev + 2
        && line.starts_with(REC)
        && &line[REC.len() + 64..ev] == EV
        && line[ev] == b'{'
        && line.ends_with(b"}}")
    {
        let hex: [u8; 64] = line[REC.len()..REC.len() + 64].try_into().ok()?;
        let hash = Hash::from_hex(&hex)?;
        return Some((hash, Some(hex), ev, line.len() - 1));
    }
    let r: history::RawRecord<'_> = serde_json::from_slice(line).ok()?;
    let raw: &str = r.event.get();
    let start = (raw.as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
    (start + raw.len() <= line.len()).then_some((r.hash, None, start, start + raw.len()))
}

fn trim_range(buf: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && buf[s].is_ascii_whitespace() {
        s += 1;
    }
    while e > s && buf[e - 1].is_ascii_whitespace() {
        e -= 1;
    }
    (s, e)
}

fn read_some(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// What a folder reports for each payment (or failure), in the reader's order.
enum Outcome {
    Payment {
        state: Box<PaymentState>,
        events: u64,
        signed: bool,
    },
    Failed(Error),
    Fallback,
}

/// Takes the outcomes in order (the k-th from folder k mod n); `None` means fall back
/// to whole-file verification.
fn merge<F>(results: &[Receiver<Outcome>], layout: Layout, f: &mut F) -> Result<Option<Report>>
where
    F: FnMut(&PaymentState) -> Result<()>,
{
    let mut report = Report {
        layout,
        payments: 0,
        events: 0,
        signed: 0,
        bytes: 0,
        statuses: BTreeMap::new(),
        last: None,
    };
    for k in 0.. {
        let Ok(outcome) = results[k % results.len()].recv() else {
            break;
        };
        match outcome {
            Outcome::Payment {
                state,
                events,
                signed,
            } => {
                f(&state)?;
                report.payments += 1;
                report.events += events;
                report.signed += u64::from(signed);
                *report.statuses.entry(state.status).or_default() += 1;
                report.last = Some(*state);
            }
            Outcome::Failed(e) => return Err(e),
            Outcome::Fallback => return Ok(None),
        }
    }
    Ok(Some(report))
}

/// A folding thread: parses and folds the payments routed to it.
fn fold_batches(
    rx: Receiver<Batch>,
    free: SyncSender<Vec<u8>>,
    at: Option<u64>,
    out: std::sync::mpsc::Sender<Outcome>,
) {
    let mut state: Option<PaymentState> = None;
    let mut fold_err: Option<(CoreError, u64)> = None;
    let mut seq = 0u64;
    // Exports repeat a few policies over many payments: parse each once per thread.
    let mut policies = PolicyCache::new();
    for batch in rx {
        for item in &batch.items {
            let outcome = match item {
                Item::Begin => {
                    state = None;
                    fold_err = None;
                    seq = 0;
                    continue;
                }
                Item::Event(r) => {
                    seq += 1;
                    if fold_err.is_some() || at.is_some_and(|a| seq > a) {
                        continue;
                    }
                    let bytes = &batch.buf[r.start..r.end];
                    let step = Envelope::from_json_cached(bytes, &mut policies)
                        .map_err(|e| match e {
                            CoreError::InvalidHistory { .. } => e,
                            other => CoreError::InvalidHistory {
                                seq,
                                reason: other.to_string(),
                            },
                        })
                        .and_then(|env| match &mut state {
                            None => fold::start(&env, r.hash).map(|s| state = Some(s)),
                            Some(s) => fold::apply(s, &env, r.hash),
                        });
                    if let Err(e) = step {
                        fold_err = Some((e, r.line));
                        state = None;
                    }
                    continue;
                }
                Item::End(end) => {
                    let stream = end.stream.or(state.as_ref().map(|s| s.payment));
                    let failure = end
                        .chain
                        .clone()
                        .or_else(|| end.head.clone())
                        .or_else(|| fold_err.take().map(|(e, l)| (e, Some(l))));
                    match (failure, state.take()) {
                        (Some((error, line)), _) => Outcome::Failed(
                            Broken {
                                stream,
                                seq: error.seq(),
                                line,
                                error,
                            }
                            .into(),
                        ),
                        (None, None) => Outcome::Failed(
                            Broken {
                                stream,
                                seq: Some(1),
                                line: None,
                                error: CoreError::InvalidHistory {
                                    seq: 1,
                                    reason: "empty history".into(),
                                },
                            }
                            .into(),
                        ),
                        // A whole history ends where a command ended.
                        (None, Some(s)) => {
                            match fold::check_complete(&s).err().filter(|_| at.is_none()) {
                                Some(error) => Outcome::Failed(
                                    Broken {
                                        stream,
                                        seq: error.seq(),
                                        line: None,
                                        error,
                                    }
                                    .into(),
                                ),
                                None => Outcome::Payment {
                                    state: Box::new(s),
                                    events: seq,
                                    signed: end.signed,
                                },
                            }
                        }
                    }
                }
                Item::Fatal(b) => Outcome::Failed(Error::Broken(b.clone())),
                Item::Fallback => Outcome::Fallback,
            };
            let stop = !matches!(outcome, Outcome::Payment { .. });
            if out.send(outcome).is_err() || stop {
                return;
            }
        }
        let _ = free.try_send(batch.buf);
    }
}
