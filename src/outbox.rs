//! A connection's bounded outgoing queue, filled by other tasks (server
//! `send_to`/`broadcast`, `Client::send`, [`ConnectionHandle`](crate::ConnectionHandle))
//! and drained by the connection task.
//!
//! It is a byte buffer, not a queue of messages: senders encode straight into
//! it under a short lock, and the connection task swaps the whole buffer out
//! and writes it with one system call. The bound is in bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;
use tokio::sync::Notify;

use crate::Error;

#[derive(Debug)]
pub(crate) struct Outbox {
    /// Encoded frames waiting for the connection task.
    buf: Mutex<BytesMut>,
    /// Bytes above which senders wait (or `try_` sends fail).
    limit: usize,
    /// Wakes the connection task when frames are added.
    ready: Notify,
    /// Wakes senders waiting for room.
    space: Notify,
    /// Set when the connection ends: sends fail with [`Error::Closed`].
    closed: AtomicBool,
}

impl Outbox {
    pub(crate) fn new(limit: usize) -> Self {
        Outbox {
            buf: Mutex::new(BytesMut::new()),
            limit,
            ready: Notify::new(),
            space: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BytesMut> {
        // A panic while holding this lock leaves only bytes behind: go on.
        self.buf
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends with `write` if there is room now.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::QueueFull`], or what `write` returns.
    pub(crate) fn try_push_with(
        &self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut buf = self.lock();
        if buf.len() >= self.limit {
            return Err(Error::QueueFull { limit: self.limit });
        }
        let was_empty = buf.is_empty();
        write(&mut buf)?;
        drop(buf);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Appends with `write`, waiting for room if the queue is full.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is queued unless the future completes.
    pub(crate) async fn push_with<F>(&self, write: F) -> Result<(), Error>
    where
        F: FnOnce(&mut BytesMut) -> Result<(), Error>,
    {
        // A sender in a tight loop must let other tasks run.
        tokio::task::consume_budget().await;
        let mut write = Some(write);
        let mut attempt = |buf: &mut BytesMut| match write.take() {
            Some(write) => write(buf),
            None => Ok(()),
        };
        // Fast path: room now, no waiter to register.
        match self.try_push_with(&mut attempt) {
            Err(Error::QueueFull { .. }) => {}
            other => return other,
        }
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.try_push_with(&mut attempt) {
                Err(Error::QueueFull { .. }) => space.await,
                other => return other,
            }
        }
    }

    /// Moves everything queued to the end of `dst` (a swap when `dst` is
    /// empty, so no copy).
    pub(crate) fn take_into(&self, dst: &mut BytesMut) {
        let mut buf = self.lock();
        if buf.is_empty() {
            return;
        }
        if dst.is_empty() {
            std::mem::swap(&mut *buf, dst);
        } else {
            dst.extend_from_slice(&buf);
            buf.clear();
        }
        drop(buf);
        self.space.notify_waiters();
    }

    /// Waits until something is queued.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await
    }

    /// Marks the outbox closed and wakes every waiting sender.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.space.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(outbox: &Outbox, bytes: &'static [u8]) -> Result<(), Error> {
        outbox.try_push_with(|b| {
            b.extend_from_slice(bytes);
            Ok(())
        })
    }

    #[test]
    fn full_outbox_refuses_until_drained() {
        let outbox = Outbox::new(4);
        push(&outbox, b"abcd").unwrap();
        assert!(matches!(
            push(&outbox, b"e"),
            Err(Error::QueueFull { limit: 4 })
        ));
        let mut out = BytesMut::new();
        outbox.take_into(&mut out);
        assert_eq!(&out[..], b"abcd");
        push(&outbox, b"e").unwrap();
    }

    #[tokio::test]
    async fn waiting_sender_wakes_when_drained_and_fails_when_closed() {
        let outbox = std::sync::Arc::new(Outbox::new(1));
        push(&outbox, b"x").unwrap();
        let o = outbox.clone();
        let waiter = tokio::spawn(async move {
            o.push_with(|b| {
                b.extend_from_slice(b"y");
                Ok(())
            })
            .await
        });
        tokio::task::yield_now().await;
        let mut out = BytesMut::new();
        outbox.take_into(&mut out);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        outbox.close();
        assert!(matches!(push(&outbox, b"z"), Err(Error::Closed)));
    }
}
