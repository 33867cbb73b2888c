//! The models. Each stands for one rule the connection relies on.

use std::future::poll_fn;
use std::task::Poll;

use bytes::BytesMut;
use loom::future::block_on;
use loom::sync::Arc;
use loom::thread;

use crate::outbox::{Outbox, PushError, Take};
use crate::signal::{Fired, Signal};

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
