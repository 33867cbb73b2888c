//! The models. Each stands for one rule the connection relies on.

use std::future::poll_fn;
use std::task::Poll;

use bytes::BytesMut;
use loom::future::block_on;
use loom::sync::Arc;
use loom::thread;

use crate::conn::outbox::{Outbox, PushError, Take};
use crate::conn::signal::{Fired, Signal};

type Pushed = Result<(), PushError<()>>;

fn bytes(b: &'static [u8]) -> impl FnOnce(&mut BytesMut) -> Result<(), ()> {
    move |buf| {
        buf.extend_from_slice(b);
        Ok(())
    }
}

/// The write side: takes and writes (in two pieces, as a partial write
/// would) until the outbox finishes; returns everything written, in order.
fn write_side(outbox: &Outbox) -> Vec<u8> {
    let mut written = Vec::new();
    let mut buf = BytesMut::new();
    loop {
        match block_on(poll_fn(|cx| outbox.poll_take(&mut buf, cx))) {
            Take::Bytes => {
                let half = buf.len() / 2;
                for piece in [half, buf.len() - half] {
                    written.extend_from_slice(&buf.split_to(piece));
                    outbox.wrote(piece);
                }
            }
            Take::Finished => return written,
        }
    }
}

/// A sender waiting for room is woken by the write side's progress, and
/// every byte is written once, in order: no lost wake-up of the sender or of
/// the write side.
#[test]
fn a_waiting_sender_is_woken_by_writes_and_nothing_is_lost() {
    loom::model(|| {
        let outbox = Arc::new(Outbox::new(2));
        outbox.try_push(bytes(b"ab")).unwrap();
        let sender = {
            let outbox = outbox.clone();
            thread::spawn(move || {
                let pushed: Pushed = block_on(outbox.push(bytes(b"cd")));
                pushed.unwrap();
                outbox.finish();
            })
        };
        let written = write_side(&outbox);
        sender.join().unwrap();
        assert_eq!(written, b"abcd");
    });
}

/// A frame queued from another thread while the write side is about to
/// wait reaches it (the register-then-check protocol of `poll_take`).
#[test]
fn the_write_side_never_misses_a_frame() {
    loom::model(|| {
        let outbox = Arc::new(Outbox::new(64));
        let sender = {
            let outbox = outbox.clone();
            thread::spawn(move || {
                outbox.try_push(bytes(b"x")).unwrap();
                outbox.try_push(bytes(b"y")).unwrap();
                outbox.finish();
            })
        };
        let written = write_side(&outbox);
        sender.join().unwrap();
        assert_eq!(written, b"xy");
    });
}

/// The connection task forgets its write waker while its read side runs
/// (`quiet_writer`), then polls the write side again: a frame queued by
/// another thread in between is still taken.
#[test]
fn a_quieted_write_side_still_sees_frames_queued_meanwhile() {
    loom::model(|| {
        let outbox = Arc::new(Outbox::new(64));
        let sender = {
            let outbox = outbox.clone();
            thread::spawn(move || outbox.try_push(bytes(b"z")).unwrap())
        };
        let mut buf = BytesMut::new();
        let got = block_on(poll_fn(|cx| {
            if let Poll::Ready(take) = outbox.poll_take(&mut buf, cx) {
                return Poll::Ready(take);
            }
            outbox.quiet_writer();
            outbox.poll_take(&mut buf, cx)
        }));
        sender.join().unwrap();
        assert_eq!(got, Take::Bytes);
        assert_eq!(&buf[..], b"z");
    });
}

/// Closing wakes a sender waiting for room, which then fails; the
/// handler's replies are still taken after the close, and nothing is taken
/// after the finish.
#[test]
fn close_wakes_waiting_senders_and_replies_still_go_out() {
    loom::model(|| {
        let outbox = Arc::new(Outbox::new(1));
        outbox.try_push(bytes(b"a")).unwrap();
        let sender = {
            let outbox = outbox.clone();
            thread::spawn(move || -> Pushed { block_on(outbox.push(bytes(b"b"))) })
        };
        outbox.close();
        outbox.push_reply(bytes(b"r")).unwrap();
        outbox.finish();
        outbox.push_reply(bytes(b"late")).unwrap();
        let written = write_side(&outbox);
        assert_eq!(sender.join().unwrap(), Err(PushError::Closed));
        assert_eq!(written, b"ar");
    });
}

/// The read side, paused while twice the bound is unsent, is woken when
/// the write side drains below it.
#[test]
fn the_paused_read_side_resumes_as_output_drains() {
    loom::model(|| {
        let outbox = Arc::new(Outbox::new(1));
        outbox.push_reply(bytes(b"ab")).unwrap();
        let writer = {
            let outbox = outbox.clone();
            thread::spawn(move || {
                let mut buf = BytesMut::new();
                let take = block_on(poll_fn(|cx| outbox.poll_take(&mut buf, cx)));
                assert_eq!(take, Take::Bytes);
                outbox.wrote(1);
            })
        };
        block_on(poll_fn(|cx| outbox.poll_reader_room(cx)));
        writer.join().unwrap();
        assert!(outbox.unsent() < 2);
    });
}

/// A close or abort asked from another thread always reaches the
/// connection task, and an abort wins over a close.
#[test]
fn signals_are_never_lost_and_abort_wins() {
    loom::model(|| {
        let signal = Arc::new(Signal::default());
        let other = {
            let signal = signal.clone();
            thread::spawn(move || {
                signal.close();
                signal.abort();
            })
        };
        let first = block_on(poll_fn(|cx| signal.poll(Fired::Close, cx)));
        assert!(matches!(first, Fired::Close | Fired::Abort));
        let abort = block_on(poll_fn(|cx| signal.poll(Fired::Abort, cx)));
        assert_eq!(abort, Fired::Abort);
        other.join().unwrap();
    });
}

/// The socket of the write-through model: it takes one byte per write (so
/// every write through is partial) and fails the model if two writers are
/// ever inside a write at once.
#[derive(Debug, Default)]
struct Socket {
    wire: loom::sync::Mutex<Vec<u8>>,
    writers: loom::sync::atomic::AtomicUsize,
}

impl Socket {
    fn write(&self, bytes: &[u8]) {
        use loom::sync::atomic::Ordering::SeqCst;
        assert_eq!(self.writers.fetch_add(1, SeqCst), 0, "two writers at once");
        self.wire.lock().unwrap().extend_from_slice(bytes);
        self.writers.fetch_sub(1, SeqCst);
    }
}

#[derive(Debug)]
struct Through(Arc<Socket>);

impl crate::transport::direct::DirectWrite for Through {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(1);
        self.0.write(&buf[..n]);
        Ok(n)
    }
}

/// Senders write through to the socket while the write side holds
/// nothing: the socket still has one writer at a time, and gets the
/// queue's bytes once each, in their order (the write side takes what a
/// partial write through left). A lone send writes through only after a
/// read (`read_some`); a batch whenever the write side holds nothing.
#[test]
fn writes_through_never_overlap_the_write_side_and_keep_the_order() {
    loom::model(|| {
        let socket = Arc::new(Socket::default());
        let outbox = Arc::new(Outbox::new(64));
        outbox.set_direct(std::sync::Arc::new(Through(socket.clone())));
        let sender = {
            let outbox = outbox.clone();
            thread::spawn(move || {
                outbox.read_some();
                outbox.try_push(bytes(b"ab")).unwrap();
                let batch: (u64, Pushed) =
                    block_on(outbox.push_all([b"cd"], |b, buf| bytes(b)(buf)));
                batch.1.unwrap();
                outbox.finish();
            })
        };
        // The write side, writing to the same socket.
        let mut buf = BytesMut::new();
        loop {
            match block_on(poll_fn(|cx| outbox.poll_take(&mut buf, cx))) {
                Take::Bytes => {
                    let n = buf.len();
                    socket.write(&buf.split_to(n));
                    outbox.wrote(n);
                }
                Take::Finished => break,
            }
        }
        sender.join().unwrap();
        assert_eq!(&socket.wire.lock().unwrap()[..], b"abcd");
    });
}
