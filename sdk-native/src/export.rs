//! Multi-payment exports: many payments' histories in one file that verifies with
//! flat memory.
//!
//! # Format
//!
//! An export is two files:
//!
//! - **the events**: NDJSON (UTF-8, `\n`-separated; blank lines are ignored), one
//!   history record per line, exactly as in a history document:
//!   `{"hash":"<64 hex>","event":{…canonical event bytes…}}`. Each payment's events are
//!   contiguous and in order from seq 1 (so its hash chain starts at all zeros), and
//!   the payments appear **in ascending order of id** (the UUIDs' byte order, which is
//!   also the order of their lower-case text), each exactly once.
//! - **the heads** (optional, but without it nothing shows the server wrote the
//!   events): NDJSON, one [`SignedHead`] per payment, in the same ascending order.
//!
//! Why sorted: a verifier reading both files side by side (a merge join) can tell, with
//! constant memory, that no payment was dropped (a head without events), added (events
//! without a head), repeated or spliced into another (a payment appearing twice), while
//! keeping only the current payment's state. A server produces it with
//! `ORDER BY stream, seq`.
//!
//! A history document of a single payment (`[`, records one per line, `]`) is accepted
//! by the verifier as well; an export of one payment is the same records without the
//! brackets and commas.
//!
//! ```
//! use trustfold::export::ExportWriter;
//! use trustfold::verify::{Layout, Verifier};
//! # let dir = tempfile::tempdir()?;
//! # let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/vectors/");
//! let history = std::fs::read(format!("{vectors}em_happy_wire.history.json"))?;
//! let events = dir.path().join("export.ndjson");
//! let mut w = ExportWriter::create(&events, None)?;
//! w.write_history(&history, None)?;
//! w.finish()?;
//! let report = Verifier::new().verify_path(&events)?;
//! assert_eq!((report.layout, report.payments, report.events), (Layout::Export, 1, 25));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::envelope::SealedEvent;
use crate::error::{Error, Result};
use crate::history::{self, SignedHead};
use crate::id::PaymentId;

/// Writes an export (events and, optionally, heads), checking the order as it goes.
#[derive(Debug)]
pub struct ExportWriter {
    events: BufWriter<File>,
    events_path: PathBuf,
    heads: Option<(BufWriter<File>, PathBuf)>,
    last: Option<PaymentId>,
    payments: u64,
    written: u64,
}

impl ExportWriter {
    /// Creates (truncates) the events file and, when given, the heads file.
    pub fn create(events: &Path, heads: Option<&Path>) -> Result<Self> {
        let open = |p: &Path| {
            File::create(p)
                .map(|f| BufWriter::with_capacity(1 << 20, f))
                .map_err(|e| Error::io(p, e))
        };
        Ok(ExportWriter {
            events: open(events)?,
            events_path: events.to_path_buf(),
            heads: match heads {
                Some(p) => Some((open(p)?, p.to_path_buf())),
                None => None,
            },
            last: None,
            payments: 0,
            written: 0,
        })
    }

    fn begin(&mut self, stream: PaymentId, head: Option<&SignedHead>) -> Result<()> {
        if self.last.is_some_and(|l| l >= stream) {
            return Err(Error::Usage(format!(
                "payments go into an export in ascending id order, each once: {stream} after {}",
                self.last.map(|p| p.to_string()).unwrap_or_default()
            )));
        }
        match (head, &mut self.heads) {
            (Some(h), Some((w, p))) => {
                if h.stream != stream {
                    return Err(Error::Usage(format!(
                        "the head is for payment {}, the events for {stream}",
                        h.stream
                    )));
                }
                let line = serde_json::to_vec(h).map_err(|e| Error::Usage(e.to_string()))?;
                w.write_all(&line)
                    .and_then(|_| w.write_all(b"\n"))
                    .map_err(|e| Error::io(p.as_path(), e))?;
            }
            (None, Some(_)) => {
                return Err(Error::Usage(format!(
                    "payment {stream} has no signed head, and this export has a heads file"
                )))
            }
            _ => {}
        }
        self.last = Some(stream);
        self.payments += 1;
        Ok(())
    }

    /// Appends one payment from its history document (records kept byte for byte).
    pub fn write_history(&mut self, history_json: &[u8], head: Option<&SignedHead>) -> Result<u64> {
        let records = history::parse(history_json)?;
        let first = records
            .first()
            .ok_or_else(|| Error::Usage("an empty history has no place in an export".into()))?;
        self.begin(first.envelope()?.stream, head)?;
        for r in &records {
            let mut hex = [0u8; 64];
            r.hash.write_hex(&mut hex);
            let w = &mut self.events;
            w.write_all(b"{\"hash\":\"")
                .and_then(|_| w.write_all(&hex))
                .and_then(|_| w.write_all(b"\",\"event\":"))
                .and_then(|_| w.write_all(r.event.get().as_bytes()))
                .and_then(|_| w.write_all(b"}\n"))
                .map_err(|e| Error::io(&self.events_path, e))?;
        }
        self.written += records.len() as u64;
        Ok(records.len() as u64)
    }

    /// Appends one payment from its sealed events (as a server or a
    /// [`Driver`](crate::driver::Driver) holds them).
    pub fn write_sealed(
        &mut self,
        stream: PaymentId,
        events: &[SealedEvent],
        head: Option<&SignedHead>,
    ) -> Result<u64> {
        self.begin(stream, head)?;
        let mut out = Vec::with_capacity(events.iter().map(|e| e.body.len() + 90).sum());
        for e in events {
            e.write_record(&mut out);
            out.push(b'\n');
        }
        self.events
            .write_all(&out)
            .map_err(|e| Error::io(&self.events_path, e))?;
        self.written += events.len() as u64;
        Ok(events.len() as u64)
    }

    /// Flushes both files; returns (payments, events) written.
    pub fn finish(mut self) -> Result<(u64, u64)> {
        self.events
            .flush()
            .map_err(|e| Error::io(&self.events_path, e))?;
        if let Some((w, p)) = &mut self.heads {
            w.flush().map_err(|e| Error::io(p.as_path(), e))?;
        }
        Ok((self.payments, self.written))
    }
}
