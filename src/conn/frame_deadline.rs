//! When a connection's idle timer restarts: a frame gets its deadline from
//! its first byte (pure).

/// Decides, after each read, whether the idle timer restarts.
///
/// Idle means no complete frame: the timer restarts when a frame has been
/// completed, so a frame must be whole within the idle timeout of its
/// first byte (a peer dribbling bytes that never finish one, a slow loris,
/// is cut). In EOF framing the one frame is the whole stream: the timer
/// restarts once, on the stream's first bytes, and never after, so the
/// stream must end within the idle timeout of its first byte.
#[derive(Debug, Default)]
pub(crate) struct FrameDeadline {
    /// Whether the EOF frame's first bytes have come.
    eof_started: bool,
}

impl FrameDeadline {
    /// After a read that completed `frames` frames: whether the idle timer
    /// restarts.
    pub(crate) fn restarts_after_read(&mut self, eof: bool, frames: u64) -> bool {
        if eof {
            !std::mem::replace(&mut self.eof_started, true)
        } else {
            frames > 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrameDeadline;

    #[test]
    fn eof_frame_restarts_the_timer_on_its_first_bytes_only() {
        let mut deadline = FrameDeadline::default();
        assert!(deadline.restarts_after_read(true, 0));
        assert!(!deadline.restarts_after_read(true, 0));
        assert!(!deadline.restarts_after_read(true, 0));
    }

    #[test]
    fn delimited_frames_restart_the_timer_when_complete() {
        let mut deadline = FrameDeadline::default();
        assert!(!deadline.restarts_after_read(false, 0));
        assert!(deadline.restarts_after_read(false, 2));
        assert!(!deadline.restarts_after_read(false, 0));
    }
}
