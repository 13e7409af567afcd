//! Receive-side flow control: a stream's end closes its side, settled streams stop counting
//! against the upstream's limit, and data handed on is credited back to the connection.

use pachgate_h2_wire::WINDOW_UPDATE;

use crate::connection::Inner;

impl Inner {
    /// Wakes the stream's reader after something arrived for it; END_STREAM closes its
    /// receiving side.
    pub(crate) fn received(&mut self, stream: u32, end_stream: bool) {
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        if end_stream {
            state.recv_closed = true;
        }
        if let Some(waker) = state.recv_waker.take() {
            waker.wake();
        }
        if end_stream {
            self.settle(stream);
        }
    }

    /// Stops counting a stream against the upstream's limit once both sides are done.
    pub(crate) fn settle(&mut self, stream: u32) {
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        if state.open && ((state.recv_closed && state.send_closed) || state.failure.is_some()) {
            state.open = false;
            self.open_streams -= 1;
            self.wake_open_waiters();
        }
    }

    pub(crate) fn credit_connection(&mut self, bytes: u32) {
        if bytes == 0 {
            return;
        }
        self.recv_unacked += bytes;
        if self.recv_unacked >= self.settings.connection_window / 2 {
            let increment = std::mem::take(&mut self.recv_unacked);
            self.recv_window += i64::from(increment);
            self.out.frame_header(4, WINDOW_UPDATE, 0, 0);
            self.out.small.extend_from_slice(&increment.to_be_bytes());
            self.wake_driver();
        }
    }
}
