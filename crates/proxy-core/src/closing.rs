//! Ending a client connection so that our last answer arrives. When hyper gives up on a
//! connection (a 431 for an over-long HTTP/1.1 head, a bad h2 preface), the client may still
//! be sending; closing a socket with unread bytes makes the kernel send a reset, and a
//! reset can overtake the answer in the client's receive queue. So the connection's I/O is
//! handed back once hyper drops it, and [`close_cleanly`] ends it the way nginx's lingering
//! close does: our side's close (TLS close_notify, then FIN) first, then whatever the
//! client still sends is read and thrown away, bounded in bytes and time.
//!
//! On a connection that chose `h2` by ALPN, bytes that are not the HTTP/2 preface end it
//! (hyper, left alone, would sniff them and serve HTTP/1.1): the read fails, and the close
//! starts with the server preface and a GOAWAY with PROTOCOL_ERROR (RFC 9113 §3.4).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

/// How long a closing connection may keep sending before it is cut.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// How many bytes a closing connection may still send before it is cut.
pub const LINGER_BYTES: usize = 256 * 1024;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The server's preface (an empty SETTINGS frame), then GOAWAY on stream 0: last stream 0,
/// PROTOCOL_ERROR (RFC 9113 §3.4, §6.8).
#[rustfmt::skip]
const GOAWAY_PROTOCOL_ERROR: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS: length 0, type 4, no flags, stream 0
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY: length 8, type 7, no flags, stream 0
    0, 0, 0, 0, // last stream id 0
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// The preface check's progress, in one byte: how many preface bytes matched so far.
const PREFACE_OFF: u8 = u8::MAX;
const PREFACE_BAD: u8 = u8::MAX - 1;

/// The connection's I/O as hyper gets it; returned through a channel when dropped.
pub struct Reclaimable<I> {
    io: Option<I>,
    // Boxed on the way back: the channel's shared state then holds one pointer, not room
    // for a whole TLS stream, in every open connection.
    back: Option<oneshot::Sender<Box<Returned<I>>>>,
    preface: u8,
}

/// The I/O hyper let go of, and whether the client's first bytes were a bad h2 preface.
pub struct Returned<I> {
    pub io: I,
    pub bad_preface: bool,
}

impl<I> Reclaimable<I> {
    /// `check_preface`: the connection must speak h2 (ALPN `h2`), so its first 24 bytes
    /// are compared with the preface as they are read.
    pub fn new(io: I, check_preface: bool) -> (Self, oneshot::Receiver<Box<Returned<I>>>) {
        let (back, receiver) = oneshot::channel();
        let wrapped = Reclaimable {
            io: Some(io),
            back: Some(back),
            preface: if check_preface { 0 } else { PREFACE_OFF },
        };
        (wrapped, receiver)
    }

    fn io(&mut self) -> &mut I {
        self.io.as_mut().expect("the I/O is only taken on drop")
    }

    fn observe(&mut self, read: &[u8]) {
        let at = self.preface as usize;
        if at >= H2_PREFACE.len() || read.is_empty() {
            return;
        }
        let take = read.len().min(H2_PREFACE.len() - at);
        self.preface = if read[..take] == H2_PREFACE[at..at + take] {
            (at + take) as u8
        } else {
            PREFACE_BAD
        };
    }
}

impl<I> Drop for Reclaimable<I> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            // Nobody waiting (a websocket took the connection over): it just closes.
            let _ = back.send(Box::new(Returned {
                io,
                bad_preface: self.preface == PREFACE_BAD,
            }));
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Reclaimable<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(self.io()).poll_read(cx, buf);
        if self.preface != PREFACE_OFF && matches!(polled, Poll::Ready(Ok(()))) {
            self.observe(&buf.filled()[before..]);
            if self.preface == PREFACE_BAD {
                // hyper would otherwise sniff the bytes and serve them as HTTP/1.1: on a
                // connection that chose h2 by ALPN that is a protocol error.
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "ALPN h2, but no HTTP/2 connection preface",
                )));
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Reclaimable<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()).poll_shutdown(cx)
    }
}

/// Ends a connection hyper gave up on: GOAWAY first after a bad h2 preface, then our
/// close (close_notify on TLS, FIN), then the client's remaining bytes read and dropped,
/// at most [`LINGER_BYTES`] within [`LINGER_TIME`]; then the socket closes.
pub async fn close_cleanly<I>(returned: Returned<I>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Returned {
        mut io,
        bad_preface,
    } = returned;
    let linger = async {
        if bad_preface {
            io.write_all(&GOAWAY_PROTOCOL_ERROR).await?;
        }
        io.shutdown().await?;
        let mut scratch = vec![0u8; 16 * 1024];
        let mut seen = 0usize;
        while seen < LINGER_BYTES {
            match io.read(&mut scratch).await? {
                0 => break,
                n => seen += n,
            }
        }
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(LINGER_TIME, linger).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_followed_across_reads() {
        let (mut io, _back) = Reclaimable::new(tokio::io::empty(), true);
        io.observe(b"PRI * HTTP/2.0\r\n");
        io.observe(b"\r\nSM\r\n\r\n\0\0\0");
        assert_eq!(io.preface as usize, H2_PREFACE.len());
        let (mut io, _back) = Reclaimable::new(tokio::io::empty(), true);
        io.observe(b"PRI * HTTP/2.0\r\n");
        io.observe(b"GET / HTTP/1.1\r\n");
        assert_eq!(io.preface, PREFACE_BAD);
        io.observe(b"SM\r\n\r\n");
        assert_eq!(io.preface, PREFACE_BAD);
    }
}
