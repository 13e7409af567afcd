//! The connection's output: frames waiting for the socket, and writing them out from the
//! connection's task or, when a batch of requests is full, from the task that filled it.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use pachgate_h2_wire as wire;
use tokio::io::AsyncWrite;

use crate::connection::Inner;
use crate::{failure::Failure, MAX_QUEUED_OUT, WRITTEN_IN_PLACE};

/// Frames waiting for the socket: small ones copied into one buffer, large DATA payloads
/// kept as their own `Bytes` and written with vectored writes.
#[derive(Default)]
pub(crate) struct Output {
    pub(crate) chunks: VecDeque<Bytes>,
    pub(crate) small: BytesMut,
    /// Bytes of the front chunk already written.
    pub(crate) front_written: usize,
    /// Bytes in `chunks`, the front one's written part included.
    chunk_bytes: usize,
}

impl Output {
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.small.is_empty()
    }

    /// Bytes waiting for the socket.
    pub(crate) fn queued(&self) -> usize {
        self.small.len() + self.chunk_bytes - self.front_written
    }

    pub(crate) fn frame_header(&mut self, length: usize, kind: u8, flags: u8, stream: u32) {
        wire::put_frame_header(&mut self.small, length, kind, flags, stream);
    }

    pub(crate) fn payload(&mut self, data: Bytes) {
        if data.len() < WRITTEN_IN_PLACE {
            self.small.extend_from_slice(&data);
        } else {
            self.seal();
            self.chunk_bytes += data.len();
            self.chunks.push_back(data);
        }
    }

    pub(crate) fn seal(&mut self) {
        if !self.small.is_empty() {
            self.chunk_bytes += self.small.len();
            self.chunks.push_back(self.small.split().freeze());
        }
    }

    pub(crate) fn poll_write<T: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        // Small frames only (the common case): written straight from their buffer.
        while self.chunks.is_empty() && !self.small.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, &self.small) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => bytes::Buf::advance(&mut self.small, n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.seal();
        while !self.chunks.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); 32];
            let mut count = 0;
            for (index, chunk) in self.chunks.iter().take(slices.len()).enumerate() {
                let skip = if index == 0 { self.front_written } else { 0 };
                slices[count] = io::IoSlice::new(&chunk[skip..]);
                count += 1;
            }
            let mut written = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            while written > 0 {
                let left = self.chunks[0].len() - self.front_written;
                if written >= left {
                    written -= left;
                    if let Some(done) = self.chunks.pop_front() {
                        self.chunk_bytes -= done.len();
                    }
                    self.front_written = 0;
                } else {
                    self.front_written += written;
                    written = 0;
                }
            }
        }
        Pin::new(&mut *io).poll_flush(cx)
    }
}

impl Inner {
    /// A stream queued a request. The one that fills a batch writes the batch out from its
    /// own task, so the upstream starts on it while the worker reads the rest; otherwise the
    /// connection's task writes once the worker has run every ready stream.
    pub(crate) fn request_queued(&mut self) {
        self.queued += 1;
        if self.queued >= self.settings.write_batch {
            self.queued = 0;
            if self.write_out_here() {
                return;
            }
        }
        self.wake_driver();
    }

    /// Writes the output from the calling task, as far as the socket takes it, with the
    /// connection task's waker registered for the rest; `false` before that task has run.
    pub(crate) fn write_out_here(&mut self) -> bool {
        let Some(waker) = self.driver.clone() else {
            return false;
        };
        self.write_out(&mut Context::from_waker(&waker));
        true
    }

    pub(crate) fn wake_driver(&self) {
        if let Some(waker) = &self.driver {
            waker.wake_by_ref();
        }
    }

    pub(crate) fn write_out(&mut self, cx: &mut Context<'_>) {
        let Some(io) = self.io.as_mut() else {
            return;
        };
        if self.out.is_empty() {
            return;
        }
        let before = self.out.queued();
        let written = self.out.poll_write(io, cx);
        let went_out = before - self.out.queued();
        self.wrote |= went_out > 0;
        self.written_total += went_out as u64;
        while self
            .unwritten_acks
            .front()
            .is_some_and(|end| *end <= self.written_total)
        {
            self.unwritten_acks.pop_front();
        }
        if let Poll::Ready(Err(e)) = written {
            self.fail(Failure::Connection(
                format!("upstream write failed: {e}").into(),
            ));
        }
        // Request bodies and new streams held back by a full queue go on once half of it
        // has been written.
        if self.body_waiting && self.out.queued() <= MAX_QUEUED_OUT / 2 {
            self.body_waiting = false;
            for state in self.streams.values_mut() {
                if let Some(waker) = state.send_waker.take() {
                    waker.wake();
                }
            }
            self.wake_open_waiters();
        }
    }
}
