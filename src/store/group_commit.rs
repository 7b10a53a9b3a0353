//! Group commit for the webhook inbox. One fsync per event capped ingest at
//! the disk's commit rate, so events arriving together share a transaction:
//! callbacks queue their event with a reply channel, and one committer
//! thread takes whatever is queued (up to [`MAX_BATCH`]) into one
//! `BEGIN IMMEDIATE` transaction, commits, and only then answers each
//! callback with its own outcome. An answer therefore always stands on a
//! committed row, as [`Store::receive_event`] promises.
//!
//! The queue is bounded: when it is full a callback waits for room
//! (backpressure) rather than being refused or dropped.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use super::inbox::{self, Event, Received};
use super::{DbError, DbResult, Store};

/// Events waiting for the committer before callbacks have to wait.
const QUEUE: usize = 1024;
/// Events per transaction at most, so one commit's answers are not held
/// back long behind a huge batch.
const MAX_BATCH: usize = 512;

/// One callback's event and where its outcome goes.
struct Queued {
    event: Event,
    claimed_subscription: i64,
    now: i64,
    reply: oneshot::Sender<DbResult<Received>>,
}

/// The sending side of the committer, started by the first event a
/// [`Store`] receives (tools and tests that never receive one start no
/// thread). Shared by every clone of that store; the thread ends when the
/// last clone is dropped.
#[derive(Clone, Default)]
pub(super) struct Committer(Arc<OnceLock<mpsc::Sender<Queued>>>);

impl Store {
    /// Commits an event that carries our subscription id (or any, while none
    /// is stored) for a connected athlete, unless an identical one is
    /// already in the inbox. Returns once the transaction holding it has
    /// committed (shared with the events that arrived alongside it).
    pub async fn receive_event(
        &self,
        event: Event,
        claimed_subscription: i64,
        now: i64,
    ) -> DbResult<Received> {
        let queue = self.committer.0.get_or_init(|| self.start_committer());
        let (reply, outcome) = oneshot::channel();
        let queued = Queued {
            event,
            claimed_subscription,
            now,
            reply,
        };
        queue
            .send(queued)
            .await
            .map_err(|_| DbError::CommitterStopped)?;
        outcome.await.map_err(|_| DbError::CommitterStopped)?
    }

    fn start_committer(&self) -> mpsc::Sender<Queued> {
        let (queue, mut queued) = mpsc::channel(QUEUE);
        // Its own clone holds no sender, so dropping the last handle of this
        // store closes the queue and ends the thread.
        let store = Store {
            committer: Committer::default(),
            ..self.clone()
        };
        std::thread::Builder::new()
            .name("inbox-commit".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(MAX_BATCH);
                while let Some(first) = queued.blocking_recv() {
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match queued.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    store.commit(&mut batch);
                }
            })
            .expect("the inbox committer thread starts");
        queue
    }

    /// Commits a batch in one transaction and answers every event. If the
    /// transaction fails, each event is retried in a transaction of its own,
    /// so one bad event does not fail the others and every callback gets
    /// its own outcome or error.
    fn commit(&self, batch: &mut Vec<Queued>) {
        let together = self.write_blocking(|tx| {
            let mut receiving = inbox::Receiving::new(tx)?;
            batch
                .iter()
                .map(|q| receiving.receive(&q.event, q.claimed_subscription, q.now))
                .collect::<DbResult<Vec<_>>>()
        });
        match together {
            Ok(outcomes) => {
                for (q, outcome) in batch.drain(..).zip(outcomes) {
                    // A callback that went away (client gone) still has its
                    // event committed; nobody is left to tell.
                    let _ = q.reply.send(Ok(outcome));
                }
            }
            Err(_) => {
                for q in batch.drain(..) {
                    let alone = self.write_blocking(|tx| {
                        inbox::Receiving::new(tx)?.receive(&q.event, q.claimed_subscription, q.now)
                    });
                    let _ = q.reply.send(alone);
                }
            }
        }
    }
}
