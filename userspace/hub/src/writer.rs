//! Group commit of the writes gateway requests make. Every poll records when its gateway was
//! last seen and every applied bundle is acknowledged; one transaction each made a publish to
//! ten thousand gateways cost ten thousand commits, one after another on SQLite. Requests now
//! queue their write and wait for the transaction that carries it; the writer takes whatever
//! is queued (up to [`MAX_BATCH`]) into each transaction.

use tokio::sync::{mpsc, oneshot};

use crate::db::{Db, GatewayWrite};

/// Most writes in one transaction.
const MAX_BATCH: usize = 2048;
/// Writes waiting for a transaction; a request beyond it waits for room (back-pressure).
const QUEUE: usize = 16 * 1024;

type Done = oneshot::Sender<Result<(), String>>;

#[derive(Clone)]
pub struct GroupWriter {
    queue: mpsc::Sender<(GatewayWrite, Done)>,
}

impl GroupWriter {
    pub fn spawn(db: Db) -> GroupWriter {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, rx));
        GroupWriter { queue }
    }

    /// Queues a write and waits until its transaction committed (or failed: the reason).
    pub async fn write(&self, write: GatewayWrite) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        self.queue
            .send((write, done))
            .await
            .map_err(|_| "the hub's writer stopped".to_string())?;
        result
            .await
            .unwrap_or_else(|_| Err("the hub's writer stopped".into()))
    }
}

async fn run(db: Db, mut rx: mpsc::Receiver<(GatewayWrite, Done)>) {
    let mut writes = Vec::with_capacity(MAX_BATCH);
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    while let Some((write, done)) = rx.recv().await {
        writes.push(write);
        waiting.push(done);
        while writes.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((write, done)) => {
                    writes.push(write);
                    waiting.push(done);
                }
                Err(_) => break,
            }
        }
        let result = db.write_batch(&writes).await.map_err(|e| {
            tracing::warn!(error = %e, writes = writes.len(), "database error");
            e.to_string()
        });
        for done in waiting.drain(..) {
            let _ = done.send(result.clone());
        }
        writes.clear();
    }
}
