//! A catch-up subscription over the tenant-wide feed.
//!
//! The handler sees every event once, in global order, starting after the stored
//! checkpoint; the checkpoint moves after each event the handler accepted. Where the
//! checkpoint lives is up to you ([`Checkpoint`]); [`FileCheckpoint`] writes it to a
//! file atomically (write, fsync, rename).
//!
//! Exactly-once needs the handler's effect and the checkpoint stored together: either
//! keep the checkpoint in the same database transaction as your projection (implement
//! [`Checkpoint`] on it), or make the handler idempotent by position. With a separate
//! file, a crash between the two replays at most the one event in flight.
//!
//! ```no_run
//! # async fn demo() -> trustfold::Result<()> {
//! use trustfold::client::Client;
//! use trustfold::subscription::{FileCheckpoint, Subscription};
//! let client = Client::new("http://127.0.0.1:8080")?.api_key("tfk_…");
//! let mut sub = Subscription::new(client, FileCheckpoint::new("feed.checkpoint"));
//! sub.run(|e| {
//!     println!("{} {} #{} {}", e.position, e.payment_id, e.seq, e.event_type);
//!     Ok(true) // false stops
//! })
//! .await?;
//! # Ok(()) }
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::{Client, FeedEvent};
use crate::error::{Error, Result};

/// Where a subscription keeps its position.
pub trait Checkpoint {
    /// The last position handled (0 before any).
    fn load(&mut self) -> Result<u64>;
    /// Records that everything up to `position` was handled.
    fn save(&mut self, position: u64) -> Result<()>;
}

/// A checkpoint in a file (the position as decimal text), replaced atomically.
#[derive(Debug, Clone)]
pub struct FileCheckpoint {
    path: PathBuf,
}

impl FileCheckpoint {
    /// A checkpoint kept at `path` (created on the first save).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileCheckpoint { path: path.into() }
    }
}

impl Checkpoint for FileCheckpoint {
    fn load(&mut self) -> Result<u64> {
        match std::fs::read_to_string(&self.path) {
            Ok(s) => s.trim().parse().map_err(|_| {
                Error::Usage(format!(
                    "{}: not a checkpoint (a position number)",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    /// Written whole or not at all: into a temporary file of its own next to the
    /// checkpoint (its full name, this process and a counter: two checkpoints `feed.a`
    /// and `feed.b`, or two subscriptions, never share one), synced, renamed over the
    /// checkpoint, and the directory synced so the rename survives a crash.
    fn save(&mut self, position: u64) -> Result<()> {
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = self.path.with_file_name(name);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(position.to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // The rename made durable (a directory is opened and synced this way on
            // Unix; elsewhere the rename is left to the file system).
            #[cfg(unix)]
            {
                let dir = match self.path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => std::path::Path::new("."),
                };
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        let done = write();
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done.map_err(|e| Error::io(&self.path, e))
    }
}

/// In memory (tests, or a projection rebuilt from scratch on each start).
impl Checkpoint for u64 {
    fn load(&mut self) -> Result<u64> {
        Ok(*self)
    }
    fn save(&mut self, position: u64) -> Result<()> {
        *self = position;
        Ok(())
    }
}

/// Reads the tenant feed from a checkpoint on. See the [module docs](self).
#[derive(Debug)]
pub struct Subscription<C: Checkpoint> {
    client: Client,
    checkpoint: C,
    poll: Duration,
    page: u32,
}

impl<C: Checkpoint> Subscription<C> {
    /// A subscription reading with `client`, its position kept in `checkpoint`.
    pub fn new(client: Client, checkpoint: C) -> Self {
        Subscription {
            client,
            checkpoint,
            poll: Duration::from_millis(500),
            page: 500,
        }
    }

    /// How long to wait before asking again once caught up.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll = d;
        self
    }

    /// The checkpoint.
    pub fn checkpoint(&self) -> &C {
        &self.checkpoint
    }

    /// Handles everything available now; returns how many events were handled.
    pub async fn catch_up<F>(&mut self, mut handler: F) -> Result<u64>
    where
        F: FnMut(&FeedEvent) -> Result<bool>,
    {
        let mut n = 0;
        loop {
            let after = self.checkpoint.load()?;
            let page = self.client.feed(after, self.page).await?;
            for e in &page.events {
                if e.position <= after {
                    continue; // never twice
                }
                if !handler(e)? {
                    return Ok(n);
                }
                self.checkpoint.save(e.position)?;
                n += 1;
            }
            if !page.has_more || page.events.is_empty() {
                return Ok(n);
            }
        }
    }

    /// Catches up, then keeps polling; returns when the handler returns `false`.
    pub async fn run<F>(&mut self, mut handler: F) -> Result<()>
    where
        F: FnMut(&FeedEvent) -> Result<bool>,
    {
        let mut stop = false;
        loop {
            self.catch_up(|e| {
                let go = handler(e)?;
                stop = !go;
                Ok(go)
            })
            .await?;
            if stop {
                return Ok(());
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_side_by_side_keep_their_own_positions() {
        // `feed.a` and `feed.b` once shared the temporary file `feed.tmp`: saved at
        // once, one could take the other's position.
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb) = (dir.path().join("feed.a"), dir.path().join("feed.b"));
        let saver = |path: std::path::PathBuf, base: u64| {
            std::thread::spawn(move || {
                let mut c = FileCheckpoint::new(path);
                for i in 0..300 {
                    c.save(base + i).unwrap();
                }
            })
        };
        let (a, b) = (saver(pa.clone(), 1_000), saver(pb.clone(), 5_000));
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(FileCheckpoint::new(pa).load().unwrap(), 1_299);
        assert_eq!(FileCheckpoint::new(pb).load().unwrap(), 5_299);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temporary files left: {left:?}");
    }

    #[test]
    fn file_checkpoint_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = FileCheckpoint::new(dir.path().join("cp"));
        assert_eq!(c.load().unwrap(), 0);
        c.save(42).unwrap();
        assert_eq!(
            FileCheckpoint::new(dir.path().join("cp")).load().unwrap(),
            42
        );
    }
}
