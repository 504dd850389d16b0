//! [`CommitQueue`]: commits on a thread of their own, at most [`COMMITS_IN_FLIGHT`] at
//! once, landing in the order they were started.
//!
//! **The invariant: a commit reaches the store only after every commit started before
//! it has landed, and not at all if one of those failed.** One long-lived thread runs
//! the commits it is handed, one after another, in order; after a failure (or a panic)
//! it runs none of the rest, answering each with an error instead. A batch is built on
//! the state its predecessors wrote, so after a failure it must not land: the caller
//! exits, and a restart replays from the last durable commit. The failure sticks: the
//! queue accepts nothing more, and settling it is an error every time.
//!
//! Why a queue at all: the pipeline processes the next batch while the last one is
//! committed. With one commit in flight, it waited for each before handing over the
//! next, and the times two threads spent waiting for each other added up (see
//! [`COMMITS_IN_FLIGHT`]). The pipeline reads the writes of the batches in flight from
//! its own copies (`pipeline::prefetch::InFlight`), which is what makes more than one
//! safe; this queue keeps the count the pipeline relies on.
//!
//! Why one thread, not one per commit: the order is then plain (one thread, one commit
//! after another), and no two commit threads are alive at once (one writing, the next
//! waiting for it), each taking a glibc malloc arena for RocksDB's allocations. With a
//! thread per commit, a 10 M run peaked at 935 MiB twice against 910 and 913 with
//! `MALLOC_ARENA_MAX=1`; later pairs were within their ±20 MiB spread (the eighteenth
//! step in docs/benchmarks.md).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context};

use crate::pipeline::COMMITS_IN_FLIGHT;

/// A commit handed to the queue's thread.
type Job<T> = Box<dyn FnOnce() -> anyhow::Result<T> + Send>;

/// See the module docs. `T` is what a commit returns once durable.
pub struct CommitQueue<T> {
    /// The thread's name (a profile tells the commits' time by it).
    name: String,
    /// The thread and its two channels, started with the first commit.
    worker: Option<Worker<T>>,
    /// Commits handed over and not answered yet.
    in_flight: usize,
    /// Set once a commit failed (or the thread could not be started): for good, since
    /// every later batch was built on state the store does not have.
    failed: bool,
}

struct Worker<T> {
    jobs: SyncSender<Job<T>>,
    answers: Receiver<anyhow::Result<T>>,
    thread: JoinHandle<()>,
}

/// The commit thread: runs each job in order; after a failed one, refuses the rest.
fn run<T>(jobs: Receiver<Job<T>>, answers: SyncSender<anyhow::Result<T>>) {
    let mut failed = false;
    for job in jobs {
        let answer = if failed {
            Err(anyhow!(
                "not committed: an earlier batch's commit failed, and this batch was built on its state"
            ))
        } else {
            catch_unwind(AssertUnwindSafe(job))
                .unwrap_or_else(|_| Err(anyhow!("a commit panicked")))
        };
        failed |= answer.is_err();
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

    /// Hands `commit` to the thread, to run once the commits in flight have landed.
    /// First waits for the oldest ones until fewer than [`COMMITS_IN_FLIGHT`] are in
    /// flight, and returns what they returned, oldest first (or the first error:
    /// nothing is started then, nor ever after).
    pub fn start(
        &mut self,
        commit: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<Vec<T>> {
        self.check()?;
        let mut landed = Vec::new();
        while self.in_flight >= COMMITS_IN_FLIGHT {
            landed.push(self.answer()?);
        }
        if self.worker.is_none() {
            let (jobs, job_rx) = sync_channel(COMMITS_IN_FLIGHT);
            let (answer_tx, answers) = sync_channel(COMMITS_IN_FLIGHT);
            let thread = std::thread::Builder::new()
                .name(self.name.clone())
                .spawn(move || run(job_rx, answer_tx))
                .context("starting the commit thread")
                .inspect_err(|_| self.failed = true)?;
            self.worker = Some(Worker {
                jobs,
                answers,
                thread,
            });
        }
        let sent = self
            .worker
            .as_ref()
            .map(|w| w.jobs.send(Box::new(commit)).is_ok());
        if sent != Some(true) {
            self.failed = true;
            return Err(anyhow!("the commit thread is gone"));
        }
        self.in_flight += 1;
        Ok(landed)
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
            thread,
        }) = self.worker.take()
        else {
            return;
        };
        // No more jobs: the thread ends after the ones it has.
        drop(jobs);
        for answer in answers.iter().take(self.in_flight) {
            if let Err(e) = answer {
                tracing::error!(error = %format!("{e:#}"), "A commit failed; a restart replays its batch.");
            }
        }
        drop(answers);
        if thread.join().is_err() {
            tracing::error!("The commit thread panicked.");
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
