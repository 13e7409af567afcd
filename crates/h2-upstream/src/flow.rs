//! Receive-side flow control: a stream's end closes its side, settled streams stop counting
//! against the upstream's limit, a stream's window is credited back as its data is handed on,
//! and the connection's as data arrives, up to a bound on what all streams hold.

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

    /// Credits `bytes` back to `stream`'s window (data handed on, or padding, which is
    /// never handed on), with a WINDOW_UPDATE once half the window is owed. Padding counts
    /// too: left out, an upstream that pads would see the stream's window shrink by every
    /// padding byte and stall for good.
    pub(crate) fn credit_stream(&mut self, stream: u32, bytes: u32) {
        let window = self.settings.stream_window;
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        state.unacked += bytes;
        if state.unacked >= window / 2 && !state.recv_closed && state.failure.is_none() {
            let increment = std::mem::take(&mut state.unacked);
            state.recv_window += i64::from(increment);
            self.out.frame_header(4, WINDOW_UPDATE, 0, stream);
            self.out.small.extend_from_slice(&increment.to_be_bytes());
            self.wake_driver();
        }
    }

    /// What all streams together may hold before the connection's window is credited only
    /// as data is handed on: twice the connection window.
    ///
    /// Crediting the connection only as data is handed on would let a few clients that stop
    /// reading (each holding up to a stream window) take the whole connection window and
    /// stall every other stream on the worker's shared connection. Crediting it as data
    /// arrives leaves each stream's own window to bound what it holds; past this many bytes
    /// held in all, the connection goes back to crediting as data is handed on, so one
    /// connection never holds more than this plus its window. The stall is pushed back, not
    /// abolished: with the default windows (2 MiB a stream, 16 MiB the connection) it takes
    /// 24 streams holding a full window each, where 8 did; memory is the price of more.
    pub(crate) fn buffer_limit(&self) -> usize {
        2 * self.settings.connection_window as usize
    }

    /// `bytes` of response data arrived for a stream that keeps them: credited to the
    /// connection now, while what the streams hold stays within [`Self::buffer_limit`].
    pub(crate) fn buffered_arrived(&mut self, bytes: usize) {
        self.buffered += bytes;
        if self.buffered <= self.buffer_limit() {
            self.credit_connection(bytes as u32);
        } else {
            self.held += bytes;
        }
    }

    /// `bytes` a stream held were handed on (or dropped with it): any credit held back for
    /// them goes to the connection now.
    pub(crate) fn handed_on(&mut self, bytes: usize) {
        debug_assert!(self.held <= self.buffered && bytes <= self.buffered);
        self.buffered -= bytes;
        let release = self.held.min(bytes);
        self.held -= release;
        self.credit_connection(release as u32);
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
