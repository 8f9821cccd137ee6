//! The threads around `merge`'s workers: a loader that reads the next
//! merged tensor's adapter updates, and a writer that writes the output
//! (and copies untouched tensors from the base itself), so that the rayon
//! workers merging a tensor never wait for either. Written buffers come
//! back to be reused for later tensors (no fresh zeroed allocation per
//! tensor).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::shards::Shards;
use crate::atomic::BackgroundSync;
use crate::error::{Error, Result};
use crate::gguf::GgufTensor;

/// What the writer writes next.
pub enum Piece<'a> {
    /// These bytes (returned for reuse once written).
    Bytes(Vec<u8>),
    /// Tensor `t` of shard `shard`, byte for byte.
    Copy { shard: usize, t: &'a GgufTensor },
}

/// Buffers kept for reuse.
const POOL: usize = 4;

/// Bytes copied at a time for untouched tensors.
const COPY_CHUNK: usize = 8 << 20;

/// Bytes written between two `fdatasync`s (on the syncer thread): the
/// disk writes the output while later tensors merge, instead of during the
/// final `fsync` before the rename (measured: 1.5 s of a 10 s merge, every
/// core idle).
const SYNC_EVERY: u64 = 16 << 20;

/// The sending side of the writer.
pub struct Writer<'a> {
    tx: SyncSender<Piece<'a>>,
    back: Receiver<Vec<u8>>,
    pool: Vec<Vec<u8>>,
}

impl<'a> Writer<'a> {
    /// Queue a piece; false when the writer has stopped (its error comes
    /// from [`spawn_writer`]'s handle).
    pub fn send(&mut self, p: Piece<'a>) -> bool {
        self.tx.send(p).is_ok()
    }

    /// A written buffer to reuse, the smallest free one with room for `n`
    /// bytes (empty if none has); its length and contents are unspecified.
    pub fn buffer(&mut self, n: usize) -> Vec<u8> {
        self.pool.extend(self.back.try_iter());
        // Keep the largest: padding and the header come back too.
        self.pool
            .sort_unstable_by_key(|b| std::cmp::Reverse(b.capacity()));
        self.pool.truncate(POOL);
        let best = (0..self.pool.len())
            .filter(|&i| self.pool[i].capacity() >= n)
            .min_by_key(|&i| self.pool[i].capacity());
        best.map(|i| self.pool.swap_remove(i)).unwrap_or_default()
    }
}

/// Start the writer on `scope`, writing to `w`; at most one piece waits
/// while one is written.
pub fn spawn_writer<'scope, 'a: 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    shards: &'a Shards,
    mut w: BufWriter<&'a mut File>,
    syncer: BackgroundSync,
    out: &'a Path,
) -> (
    Writer<'a>,
    std::thread::ScopedJoinHandle<'scope, Result<()>>,
) {
    let (tx, rx) = sync_channel::<Piece<'a>>(0);
    let (back_tx, back) = std::sync::mpsc::channel();
    let handle = scope.spawn(move || -> Result<()> {
        let mut chunk = Vec::new();
        let out_err = |e: std::io::Error| Error::io(out, e);
        // What is written so far goes to disk in the background while the
        // writer goes on writing.
        let mut unsynced = 0u64;
        for piece in rx {
            if unsynced >= SYNC_EVERY {
                w.flush().map_err(out_err)?;
                syncer.poke();
                unsynced = 0;
            }
            match piece {
                Piece::Bytes(b) => {
                    w.write_all(&b).map_err(out_err)?;
                    unsynced += b.len() as u64;
                    let _ = back_tx.send(b); // the main side may be gone
                }
                Piece::Copy { shard, t } => {
                    let mut done = 0u64;
                    while done < t.size {
                        let n = (t.size - done).min(COPY_CHUNK as u64) as usize;
                        chunk.resize(n, 0);
                        shards.read(shard, t, done, &mut chunk)?;
                        w.write_all(&chunk).map_err(out_err)?;
                        done += n as u64;
                        unsynced += n as u64;
                    }
                }
            }
        }
        syncer.finish()?;
        w.flush().map_err(out_err)
    });
    (
        Writer {
            tx,
            back,
            pool: Vec::new(),
        },
        handle,
    )
}

/// Start a loader on `scope` that runs `load` for each name in order, one
/// ahead of the consumer.
pub fn spawn_loader<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    names: Vec<String>,
    load: impl Fn(&str) -> T + Send + 'scope,
) -> Receiver<T> {
    let (tx, rx) = sync_channel(1);
    scope.spawn(move || {
        for n in names {
            if tx.send(load(&n)).is_err() {
                break; // the consumer stopped
            }
        }
    });
    rx
}
