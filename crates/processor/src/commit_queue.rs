//! [`CommitQueue`]: commits on threads of their own, at most [`COMMITS_IN_FLIGHT`] at
//! once, landing in the order they were started.
//!
//! **The invariant: a commit lands (is durable, and answered) only after every commit
//! started before it has landed, and not at all if one of those failed.** A commit is
//! two steps: its write, then making the write durable (`StateStore::write_commit`,
//! `StateStore::make_durable`). One long-lived thread runs the writes, one after
//! another, in order; a second runs the durable steps, in the same order. So batch
//! `N + 1`'s write overlaps batch `N`'s fsync, the disk's time, which before held the
//! next write back (docs/benchmarks.md, fortieth step). After a failure (or a panic)
//! neither thread runs any more steps, answering each commit with an error instead. A
//! batch is built on the state its predecessors wrote, so after a failure it must not
//! land: the caller exits, and a restart replays from the last durable commit. The
//! failure sticks: the queue accepts nothing more, and settling it is an error every
//! time.
//!
//! A later commit may be *written* before an earlier one's durable step fails (the
//! two run side by side). That is safe as the store writes: the WAL is sequential, so
//! a crash recovers a prefix of the writes, and nothing outside the process acts on a
//! write before its durable step (`store::durable` in the state crate).
//!
//! Why a queue at all: the pipeline processes the next batch while the last one is
//! committed. With one commit in flight, it waited for each before handing over the
//! next, and the times two threads spent waiting for each other added up (see
//! [`COMMITS_IN_FLIGHT`]). The pipeline reads the writes of the batches in flight from
//! its own copies (`pipeline::prefetch::InFlight`), which is what makes more than one
//! safe; this queue keeps the count the pipeline relies on.
//!
//! Why two long-lived threads, not one per commit: the order is then plain (one
//! thread a step, one commit after another), and threads are not started per batch.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context};

use crate::pipeline::COMMITS_IN_FLIGHT;

/// A commit's second step: makes its write durable, and returns what the commit returns.
pub type DurableStep<T> = Box<dyn FnOnce() -> anyhow::Result<T> + Send>;

/// A commit handed to the queue: its write, which returns its durable step.
type Job<T> = Box<dyn FnOnce() -> anyhow::Result<DurableStep<T>> + Send>;

/// See the module docs. `T` is what a commit returns once durable.
pub struct CommitQueue<T> {
    /// The writing thread's name (a profile tells the commits' time by it); the
    /// durable steps' thread is named after it, `-sync` added.
    name: String,
    /// The threads and their channels, started with the first commit.
    worker: Option<Worker<T>>,
    /// Commits handed over and not answered yet.
    in_flight: usize,
    /// Set once a commit failed (or a thread could not be started): for good, since
    /// every later batch was built on state the store does not have.
    failed: bool,
}

struct Worker<T> {
    jobs: SyncSender<Job<T>>,
    answers: Receiver<anyhow::Result<T>>,
    threads: [JoinHandle<()>; 2],
}

fn refused<T>() -> anyhow::Result<T> {
    Err(anyhow!(
        "not committed: an earlier batch's commit failed, and this batch was built on its state"
    ))
}

/// The writing thread: runs each write in order; after a failed one (here or in a
/// durable step, `stopped`), refuses the rest.
fn write_in_order<T>(
    jobs: Receiver<Job<T>>,
    written: SyncSender<anyhow::Result<DurableStep<T>>>,
    stopped: Arc<AtomicBool>,
) {
    let mut failed = false;
    for job in jobs {
        let step = if failed || stopped.load(Ordering::Acquire) {
            refused()
        } else {
            catch_unwind(AssertUnwindSafe(job))
                .unwrap_or_else(|_| Err(anyhow!("a commit panicked")))
        };
        failed |= step.is_err();
        if written.send(step).is_err() {
            return;
        }
    }
}

/// The durable steps' thread: runs each in order, answering for its commit; after a
/// failed one (or a failed write), refuses the rest.
fn make_durable_in_order<T>(
    written: Receiver<anyhow::Result<DurableStep<T>>>,
    answers: SyncSender<anyhow::Result<T>>,
    stopped: Arc<AtomicBool>,
) {
    let mut failed = false;
    for step in written {
        let answer = match step {
            _ if failed => refused(),
            Ok(durable) => catch_unwind(AssertUnwindSafe(durable))
                .unwrap_or_else(|_| Err(anyhow!("a commit panicked"))),
            Err(e) => Err(e),
        };
        if answer.is_err() {
            failed = true;
            stopped.store(true, Ordering::Release);
        }
        if answers.send(answer).is_err() {
            return;
        }
    }
}

impl<T: Send + 'static> CommitQueue<T> {
    /// A queue whose commits run on a thread named `name`.
    pub fn new(name: &str) -> CommitQueue<T> {
        CommitQueue {
            name: name.into(),
            worker: None,
            in_flight: 0,
            failed: false,
        }
    }

    /// How many commits are in flight.
    pub fn len(&self) -> usize {
        self.in_flight
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight == 0
    }

    /// Hands a one-step `commit` (durable when it returns) to the queue: see
    /// [`CommitQueue::start_split`]. Tests only: its whole commit runs on the writing
    /// thread, so beside split commits its durable part could run before theirs.
    #[cfg(test)]
    pub fn start(
        &mut self,
        commit: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<Vec<T>> {
        self.start_split(move || {
            let t = commit()?;
            Ok(Box::new(move || Ok(t)) as DurableStep<T>)
        })
    }

    /// Hands a commit to the queue: `write` runs once the writes of the commits in
    /// flight have run, and the durable step it returns once theirs have. First waits
    /// for the oldest commits until fewer than [`COMMITS_IN_FLIGHT`] are in flight, and
    /// returns what they returned, oldest first (or the first error: nothing is started
    /// then, nor ever after).
    pub fn start_split(
        &mut self,
        write: impl FnOnce() -> anyhow::Result<DurableStep<T>> + Send + 'static,
    ) -> anyhow::Result<Vec<T>> {
        self.check()?;
        let mut landed = Vec::new();
        while self.in_flight >= COMMITS_IN_FLIGHT {
            landed.push(self.answer()?);
        }
        if self.worker.is_none() {
            self.worker = Some(self.spawn().inspect_err(|_| self.failed = true)?);
        }
        let sent = self
            .worker
            .as_ref()
            .map(|w| w.jobs.send(Box::new(write)).is_ok());
        if sent != Some(true) {
            self.failed = true;
            return Err(anyhow!("the commit thread is gone"));
        }
        self.in_flight += 1;
        Ok(landed)
    }

    fn spawn(&self) -> anyhow::Result<Worker<T>> {
        let (jobs, job_rx) = sync_channel(COMMITS_IN_FLIGHT);
        let (written_tx, written_rx) = sync_channel(COMMITS_IN_FLIGHT);
        let (answer_tx, answers) = sync_channel(COMMITS_IN_FLIGHT);
        let stopped = Arc::new(AtomicBool::new(false));
        let s = stopped.clone();
        let durable = std::thread::Builder::new()
            .name(format!("{}-sync", self.name))
            .spawn(move || make_durable_in_order(written_rx, answer_tx, s))
            .context("starting the commits' durable thread")?;
        // Without the writing thread, the durable one ends: its channel closes.
        let writer = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || write_in_order(job_rx, written_tx, stopped))
            .context("starting the commit thread")?;
        Ok(Worker {
            jobs,
            answers,
            threads: [writer, durable],
        })
    }

    /// Waits for every commit in flight; returns what they returned, oldest first, or
    /// the first error (the rest are still waited for, when the queue is dropped). Once
    /// a commit has failed, an error every time.
    pub fn settle(&mut self) -> anyhow::Result<Vec<T>> {
        let mut landed = Vec::with_capacity(self.in_flight);
        while self.in_flight > 0 {
            landed.push(self.answer()?);
        }
        self.check()?;
        Ok(landed)
    }

    /// An error once a commit has failed.
    fn check(&self) -> anyhow::Result<()> {
        if self.failed {
            return Err(anyhow!(
                "an earlier commit failed: nothing after it is committed (a restart replays from the last durable commit)"
            ));
        }
        Ok(())
    }

    /// The oldest commit's answer.
    fn answer(&mut self) -> anyhow::Result<T> {
        self.in_flight -= 1;
        let answer = match &self.worker {
            Some(w) => w
                .answers
                .recv()
                .unwrap_or_else(|_| Err(anyhow!("the commit thread stopped"))),
            None => Err(anyhow!("no commit in flight")),
        };
        if answer.is_err() {
            self.failed = true;
        }
        answer
    }
}

impl<T> Drop for CommitQueue<T> {
    /// Commits abandoned on an error path are still waited for: the process must not
    /// exit, or reopen the store, under a write in progress.
    fn drop(&mut self) {
        let Some(Worker {
            jobs,
            answers,
            threads,
        }) = self.worker.take()
        else {
            return;
        };
        // No more jobs: the threads end after the ones they have.
        drop(jobs);
        for answer in answers.iter().take(self.in_flight) {
            if let Err(e) = answer {
                tracing::error!(error = %format!("{e:#}"), "A commit failed; a restart replays its batch.");
            }
        }
        drop(answers);
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("A commit thread panicked.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    #[test]
    fn commits_land_in_the_order_they_were_started_and_at_most_two_at_once() {
        assert_eq!(COMMITS_IN_FLIGHT, 2);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut q = CommitQueue::new("commit");
        let mut landed = Vec::new();
        for i in 0..6u64 {
            let order = order.clone();
            // Earlier commits are slower: run side by side, later ones would land first.
            landed.extend(
                q.start(move || {
                    std::thread::sleep(Duration::from_millis(30 - 5 * i));
                    order.lock().unwrap().push(i);
                    Ok(i)
                })
                .unwrap(),
            );
            assert!(q.len() <= COMMITS_IN_FLIGHT);
        }
        landed.extend(q.settle().unwrap());
        assert_eq!(landed, (0..6).collect::<Vec<_>>());
        assert_eq!(*order.lock().unwrap(), (0..6).collect::<Vec<_>>());
        assert!(q.is_empty());
    }

    #[test]
    fn after_a_failed_commit_the_next_one_does_not_run() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let mut q: CommitQueue<u32> = CommitQueue::new("commit");
        let r = ran.clone();
        q.start(move || {
            std::thread::sleep(Duration::from_millis(20));
            r.lock().unwrap().push(1);
            Err(anyhow!("disk full"))
        })
        .unwrap();
        let r = ran.clone();
        q.start(move || {
            r.lock().unwrap().push(2);
            Ok(2)
        })
        .unwrap();
        let err = q.settle().unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        // The second commit refused to run; and the failure sticks: nothing settles
        // cleanly, nothing more starts (a synchronous commit settles first).
        let second = q.settle().unwrap_err();
        assert!(
            format!("{second:#}").contains("earlier batch"),
            "{second:#}"
        );
        assert!(q.is_empty());
        assert!(q.settle().is_err());
        let r = ran.clone();
        let refused = q.start(move || {
            r.lock().unwrap().push(3);
            Ok(3)
        });
        assert!(refused.is_err());
        drop(q);
        assert_eq!(*ran.lock().unwrap(), vec![1]);
    }

    /// A commit's write runs while the commit before it is still in its durable step,
    /// and the commits still land in order.
    #[test]
    fn the_next_write_runs_during_the_durable_step_before_it_and_order_holds() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut q: CommitQueue<u32> = CommitQueue::new("commit");
        let mut landed = Vec::new();
        for i in 0..4u32 {
            let log = log.clone();
            landed.extend(
                q.start_split(move || {
                    log.lock().unwrap().push(format!("write {i}"));
                    Ok(Box::new(move || {
                        log.lock().unwrap().push(format!("durable {i} begins"));
                        // The disk's time: until the next commit's write has run (it
                        // never would if writes waited for durable steps; 5 s then).
                        let next = format!("write {}", i + 1);
                        let waited = std::time::Instant::now();
                        while i < 3
                            && !log.lock().unwrap().contains(&next)
                            && waited.elapsed() < Duration::from_secs(5)
                        {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        log.lock().unwrap().push(format!("durable {i} ends"));
                        Ok(i)
                    }) as DurableStep<u32>)
                })
                .unwrap(),
            );
        }
        landed.extend(q.settle().unwrap());
        assert_eq!(landed, [0, 1, 2, 3]);
        let log = log.lock().unwrap();
        let at = |what: &str| log.iter().position(|l| l == what).unwrap();
        for i in 0..3 {
            assert!(
                at(&format!("write {}", i + 1)) < at(&format!("durable {i} ends")),
                "{log:?}"
            );
            assert!(
                at(&format!("durable {i} ends")) < at(&format!("durable {} begins", i + 1)),
                "{log:?}"
            );
        }
    }

    /// A failed durable step: the commits after it are never made durable, and a write
    /// handed over once the failure is known does not run either.
    #[test]
    fn after_a_failed_durable_step_nothing_after_it_lands() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let mut q: CommitQueue<u32> = CommitQueue::new("commit");
        let r = ran.clone();
        q.start_split(move || {
            Ok(Box::new(move || {
                r.lock().unwrap().push("durable 1");
                Err(anyhow!("fsync failed"))
            }) as DurableStep<u32>)
        })
        .unwrap();
        // The threads know of the failure; the queue does not yet (it reads answers
        // only when it must), so it hands the next commit over.
        while !ran.lock().unwrap().contains(&"durable 1") {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        let r = ran.clone();
        q.start_split(move || {
            let r2 = r.clone();
            r.lock().unwrap().push("write 2");
            Ok(Box::new(move || {
                r2.lock().unwrap().push("durable 2");
                Ok(2u32)
            }) as DurableStep<u32>)
        })
        .unwrap();
        let err = q.settle().unwrap_err();
        assert!(format!("{err:#}").contains("fsync failed"), "{err:#}");
        let second = q.settle().unwrap_err();
        assert!(
            format!("{second:#}").contains("earlier batch"),
            "{second:#}"
        );
        assert!(q
            .start_split(|| Ok(Box::new(|| Ok(3u32)) as DurableStep<u32>))
            .is_err());
        drop(q);
        assert_eq!(*ran.lock().unwrap(), vec!["durable 1"]);
    }

    #[test]
    fn a_panicked_commit_stops_the_ones_after_it() {
        let mut q: CommitQueue<u32> = CommitQueue::new("commit");
        q.start(|| panic!("bug")).unwrap();
        q.start(|| Ok(2)).unwrap();
        let first = q.settle().unwrap_err();
        assert!(format!("{first:#}").contains("panicked"), "{first:#}");
        let second = q.settle().unwrap_err();
        assert!(
            format!("{second:#}").contains("earlier batch"),
            "{second:#}"
        );
    }
}
