//! The writer thread's side of stdout: batches of whole lines written out whatever stdout
//! does (full and non-blocking, closed, on a full disk), each line lost counted.

use std::io::Write;
use std::time::Duration;

/// How long the writer waits before trying a full non-blocking stdout again.
const WOULD_BLOCK_PAUSE: Duration = Duration::from_millis(1);

/// What the writer remembers of stdout between batches.
#[derive(Default)]
pub(super) struct OutputState {
    /// A failure cut the last line short: the next batch ends it first, so that no line
    /// runs into another.
    torn: bool,
    /// A failure has been reported on stderr (once; the dropped count says the rest).
    reported: bool,
}

impl OutputState {
    /// Writes a batch of whole lines; returns how many were lost. A stdout opened
    /// non-blocking by someone else is waited for when full, not given up on. Any other
    /// failure (a closed pipe, a full disk) loses the rest of the batch: every line not
    /// written whole is counted, and the next batch is tried afresh.
    pub(super) fn put(&mut self, out: &mut impl Write, batch: &[u8]) -> u64 {
        let count_lines = |bytes: &[u8]| bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        if self.torn {
            if let Err(error) = write_waiting(out, b"\n") {
                self.report(&error);
                return count_lines(batch);
            }
            self.torn = false;
        }
        let mut at = 0;
        while at < batch.len() {
            match write_waiting(out, &batch[at..]) {
                Ok(written) => at += written,
                Err(error) => {
                    self.report(&error);
                    self.torn = at > 0 && batch[at - 1] != b'\n';
                    return count_lines(&batch[at..]);
                }
            }
        }
        let _ = out.flush();
        0
    }

    fn report(&mut self, error: &std::io::Error) {
        if !std::mem::replace(&mut self.reported, true) {
            // Not `eprintln!`: it panics when stderr fails as well.
            let _ = writeln!(
                std::io::stderr(),
                "pachgate: cannot write the access log to stdout ({error}); lines are dropped \
                 and counted in pachgate_access_log_dropped_total"
            );
        }
    }
}

/// One `write`, retried when interrupted or when a non-blocking stdout is full.
fn write_waiting(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<usize> {
    loop {
        match out.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => return Ok(written),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(WOULD_BLOCK_PAUSE);
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stdout that answers each `write` as scripted, then takes everything.
    struct ScriptedOut {
        script: std::collections::VecDeque<Result<usize, std::io::ErrorKind>>,
        got: Vec<u8>,
    }

    impl ScriptedOut {
        fn new(script: &[Result<usize, std::io::ErrorKind>]) -> Self {
            ScriptedOut {
                script: script.iter().copied().collect(),
                got: Vec::new(),
            }
        }
    }

    impl Write for ScriptedOut {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let take = match self.script.pop_front() {
                None => buf.len(),
                Some(Ok(at_most)) => at_most.min(buf.len()),
                Some(Err(kind)) => return Err(kind.into()),
            };
            self.got.extend_from_slice(&buf[..take]);
            Ok(take)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const BATCH: &[u8] = b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n";

    #[test]
    fn a_full_nonblocking_stdout_is_waited_for_and_loses_nothing() {
        use std::io::ErrorKind::{Interrupted, WouldBlock};
        let mut out =
            ScriptedOut::new(&[Err(WouldBlock), Ok(5), Err(Interrupted), Err(WouldBlock)]);
        let mut state = OutputState::default();
        assert_eq!(state.put(&mut out, BATCH), 0);
        assert_eq!(out.got, BATCH);
        assert!(!state.reported);
    }

    #[test]
    fn a_failing_stdout_counts_every_line_it_did_not_take_whole() {
        use std::io::ErrorKind::{BrokenPipe, StorageFull};
        // Half of the first line, then a closed pipe: all three lines are lost.
        let mut out = ScriptedOut::new(&[Ok(4), Err(BrokenPipe)]);
        let mut state = OutputState::default();
        assert_eq!(state.put(&mut out, BATCH), 3);
        assert!(state.reported);
        // The next batch goes through, after a newline that ends the torn line: every
        // line of the output is either whole or that piece, alone on its line.
        assert_eq!(state.put(&mut out, BATCH), 0);
        assert_eq!(out.got, [&BATCH[..4], b"\n", BATCH].concat());

        // A disk full after whole lines loses the rest and tears nothing.
        let mut out = ScriptedOut::new(&[Ok(8), Err(StorageFull)]);
        let mut state = OutputState::default();
        assert_eq!(state.put(&mut out, BATCH), 2);
        assert_eq!(state.put(&mut out, BATCH), 0);
        assert_eq!(out.got, [&BATCH[..8], BATCH].concat());

        // When ending the torn line fails too, the whole next batch is counted.
        let mut out = ScriptedOut::new(&[Ok(4), Err(BrokenPipe), Err(BrokenPipe)]);
        let mut state = OutputState::default();
        assert_eq!(state.put(&mut out, BATCH), 3);
        assert_eq!(state.put(&mut out, BATCH), 3);
        assert!(state.torn, "the torn line is still to be ended");
    }
}
