//! [`CommitQueue`]: commits on threads of their own, at most [`COMMITS_IN_FLIGHT`] at
//! once, landing in the order they were started.
//!
//! **The invariant: a commit reaches the store only after every commit started before
//! it has landed, and not at all if one of those failed.** Each commit's thread first
//! waits for its predecessor's word (a one-shot channel): `true` once that one is
//! durable, `false` (or a dropped channel, if its thread panicked) if it failed. A
//! batch is built on the state its predecessors wrote, so after a failure it must not
//! land: its commit returns an error instead, and the caller exits (a restart replays
//! from the last durable commit).
//!
//! Why a queue at all: the pipeline processes the next batch while the last one is
//! committed. With one commit in flight, it waited for each before handing over the
//! next, and the times two threads spent waiting for each other added up (see
//! [`COMMITS_IN_FLIGHT`]). The pipeline reads the writes of the batches in flight from
//! its own copies (`pipeline::prefetch::InFlight`), which is what makes more than one
//! safe; this queue keeps the count the pipeline relies on.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context};

use crate::pipeline::COMMITS_IN_FLIGHT;

/// See the module docs. `T` is what a commit returns once durable.
pub struct CommitQueue<T> {
    /// Oldest first.
    running: VecDeque<JoinHandle<anyhow::Result<T>>>,
    /// The newest commit's word, for the next one to wait for.
    last: Option<Receiver<bool>>,
}

impl<T> Default for CommitQueue<T> {
    fn default() -> Self {
        CommitQueue {
            running: VecDeque::new(),
            last: None,
        }
    }
}

impl<T: Send + 'static> CommitQueue<T> {
    /// How many commits are in flight.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts `commit` on a thread named `name`, to run once the commits in flight have
    /// landed. First waits for the oldest ones until fewer than [`COMMITS_IN_FLIGHT`]
    /// are in flight, and returns what they returned, oldest first (or the first
    /// error: nothing is started then).
    pub fn start(
        &mut self,
        name: &str,
        commit: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<Vec<T>> {
        let mut landed = Vec::new();
        while self.running.len() >= COMMITS_IN_FLIGHT {
            landed.push(self.join_oldest()?);
        }
        let after = self.last.take();
        let (word, wait) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Some(after) = after {
                    if after.recv() != Ok(true) {
                        return Err(anyhow!(
                            "not committed: an earlier batch's commit failed, and this batch was built on its state"
                        ));
                    }
                }
                let result = commit();
                // The next commit may have been abandoned with the queue: nobody to tell.
                let _ = word.send(result.is_ok());
                result
            })
            .context("starting a commit thread")?;
        self.running.push_back(thread);
        self.last = Some(wait);
        Ok(landed)
    }

    /// Waits for every commit in flight; returns what they returned, oldest first, or
    /// the first error (the rest are still waited for, when the queue is dropped).
    pub fn settle(&mut self) -> anyhow::Result<Vec<T>> {
        let mut landed = Vec::with_capacity(self.running.len());
        while !self.running.is_empty() {
            landed.push(self.join_oldest()?);
        }
        Ok(landed)
    }

    fn join_oldest(&mut self) -> anyhow::Result<T> {
        let Some(thread) = self.running.pop_front() else {
            return Err(anyhow!("no commit in flight"));
        };
        thread
            .join()
            .map_err(|_| anyhow!("a commit thread panicked"))?
    }
}

impl<T> Drop for CommitQueue<T> {
    /// Commits abandoned on an error path are still waited for: the process must not
    /// exit, or reopen the store, under a write in progress.
    fn drop(&mut self) {
        for thread in self.running.drain(..) {
            match thread.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "A commit failed; a restart replays its batch.");
                }
                Err(_) => tracing::error!("A commit thread panicked; a restart replays its batch."),
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
        let mut q = CommitQueue::default();
        let mut landed = Vec::new();
        for i in 0..6u64 {
            let order = order.clone();
            // Earlier commits are slower: without the wait, later ones would land first.
            landed.extend(
                q.start("commit", move || {
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
        let mut q: CommitQueue<u32> = CommitQueue::default();
        let r = ran.clone();
        q.start("commit", move || {
            std::thread::sleep(Duration::from_millis(20));
            r.lock().unwrap().push(1);
            Err(anyhow!("disk full"))
        })
        .unwrap();
        let r = ran.clone();
        q.start("commit", move || {
            r.lock().unwrap().push(2);
            Ok(2)
        })
        .unwrap();
        let err = q.settle().unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        drop(q);
        // The second commit was waited for (on drop) and never wrote.
        assert_eq!(*ran.lock().unwrap(), vec![1]);
    }

    #[test]
    fn a_panicked_commit_stops_the_ones_after_it() {
        let mut q: CommitQueue<u32> = CommitQueue::default();
        q.start("commit", || panic!("bug")).unwrap();
        q.start("commit", || Ok(2)).unwrap();
        let first = q.settle().unwrap_err();
        assert!(format!("{first:#}").contains("panicked"), "{first:#}");
        let second = q.settle().unwrap_err();
        assert!(
            format!("{second:#}").contains("earlier batch"),
            "{second:#}"
        );
    }
}
