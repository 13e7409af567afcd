//! What the upstream sends, frame by frame: every check of RFC 9113 and of our limits is
//! here, and a violation resets its stream or ends the connection (GOAWAY).

use bytes::BytesMut;
use http::{Response, StatusCode, Version};
use pachgate_h2_wire::{
    self as wire, Next, ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING,
    PRIORITY, PUSH_PROMISE, RST_STREAM, SETTINGS, WINDOW_UPDATE,
};

use crate::{
    connection::Inner,
    failure::Failure,
    header_block::{content_length, decode_response_block, DecodedBlock},
    stream::Head,
    COALESCE_LIMIT, LAST_STREAM_ID, MAX_CONTINUATIONS, MAX_FRAME_IN, MAX_HEADER_BLOCK, MAX_WINDOW,
};

impl Inner {
    /// Handles every whole frame in the read buffer.
    pub(crate) fn process_frames(&mut self) -> Result<(), (h2::Reason, String)> {
        let mut reader = std::mem::take(&mut self.reader);
        let result = (|| loop {
            let (kind, head) = match reader.next_frame() {
                Next::Incomplete => return Ok(()),
                Next::Oversized { kind, .. } => (kind, None),
                Next::Frame(head) => (head.kind, Some(head)),
            };
            if !self.peer_settings_seen && kind != SETTINGS {
                return Err(protocol("the upstream did not open with h2 SETTINGS"));
            }
            let Some(head) = head else {
                return Err((
                    h2::Reason::FRAME_SIZE_ERROR,
                    format!("a frame over our {MAX_FRAME_IN}-byte limit"),
                ));
            };
            if !(kind == PING && head.flags & ACK != 0) {
                self.heard = true;
            }
            self.frame(kind, head.flags, head.stream, reader.payload(&head))?;
        })();
        self.reader = reader;
        result
    }

    pub(crate) fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> Result<(), (h2::Reason, String)> {
        if self.continuing.is_some() && kind != CONTINUATION {
            return Err(protocol("header block interrupted"));
        }
        // RFC 9113 §5.1: a stream we never opened (the server opens none) is idle, and
        // only PRIORITY may name it. One answered on the wrong id is caught here, instead
        // of the real stream waiting for an answer that went elsewhere.
        if matches!(kind, DATA | HEADERS | RST_STREAM | WINDOW_UPDATE)
            && stream != 0
            && (stream.is_multiple_of(2) || stream >= self.next_id)
        {
            return Err(protocol("a frame on a stream never opened"));
        }
        match kind {
            DATA => self.data(flags, stream, payload),
            HEADERS => {
                if stream == 0 {
                    return Err(protocol("HEADERS on stream 0"));
                }
                let block = unpad(flags, payload, if flags & PRIORITY != 0 { 5 } else { 0 })?;
                self.header_block.clear();
                self.header_block.extend_from_slice(block);
                self.continuations = 0;
                if flags & END_HEADERS != 0 {
                    self.header_block_done(stream, flags & END_STREAM != 0)
                } else {
                    self.continuing = Some((stream, flags & END_STREAM != 0));
                    Ok(())
                }
            }
            CONTINUATION => {
                let Some((open, end_stream)) = self.continuing else {
                    return Err(protocol("CONTINUATION without HEADERS"));
                };
                if open != stream {
                    return Err(protocol("CONTINUATION on another stream"));
                }
                self.continuations += 1;
                if self.continuations > MAX_CONTINUATIONS {
                    return Err((
                        h2::Reason::ENHANCE_YOUR_CALM,
                        format!("over {MAX_CONTINUATIONS} CONTINUATION frames in one header block"),
                    ));
                }
                if self.header_block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err((
                        h2::Reason::ENHANCE_YOUR_CALM,
                        format!("response header block over {MAX_HEADER_BLOCK} bytes"),
                    ));
                }
                self.header_block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    self.continuing = None;
                    self.header_block_done(stream, end_stream)
                } else {
                    Ok(())
                }
            }
            RST_STREAM => {
                if stream == 0 {
                    return Err(protocol("RST_STREAM on stream 0"));
                }
                if payload.len() != 4 {
                    return Err((h2::Reason::FRAME_SIZE_ERROR, "malformed RST_STREAM".into()));
                }
                let reason = h2::Reason::from(be_u32(payload));
                if let Some(state) = self.streams.get_mut(&stream) {
                    state.send_closed = true;
                    // After a complete response, a reset only stops the request body.
                    if !state.recv_closed && state.failure.is_none() {
                        state.failure = Some(
                            if reason == h2::Reason::REFUSED_STREAM
                                && matches!(state.head, Head::Awaiting)
                            {
                                Failure::Refused
                            } else {
                                Failure::Reset(reason)
                            },
                        );
                    }
                    state.wake();
                    self.settle(stream);
                }
                Ok(())
            }
            SETTINGS => {
                if stream != 0 {
                    return Err(protocol("SETTINGS on a stream"));
                }
                if flags & ACK == 0 {
                    self.apply_settings(payload)?;
                    self.out.frame_header(0, SETTINGS, ACK, 0);
                    self.acknowledged()?;
                } else if !payload.is_empty() {
                    return Err((
                        h2::Reason::FRAME_SIZE_ERROR,
                        "SETTINGS ACK with a payload".into(),
                    ));
                }
                Ok(())
            }
            PING => {
                if stream != 0 {
                    return Err(protocol("PING on a stream"));
                }
                if payload.len() != 8 {
                    return Err((h2::Reason::FRAME_SIZE_ERROR, "malformed PING".into()));
                }
                if flags & ACK == 0 {
                    self.out.frame_header(8, PING, ACK, 0);
                    self.out.small.extend_from_slice(payload);
                    self.acknowledged()?;
                } else {
                    self.ping_outstanding = false;
                    self.pong_received = true;
                }
                Ok(())
            }
            GOAWAY => {
                if stream != 0 {
                    return Err(protocol("GOAWAY on a stream"));
                }
                if payload.len() < 8 {
                    return Err((h2::Reason::FRAME_SIZE_ERROR, "malformed GOAWAY".into()));
                }
                let last = be_u32(payload) & LAST_STREAM_ID;
                let reason = h2::Reason::from(be_u32(&payload[4..]));
                tracing::debug!(?reason, last_stream = last, "upstream sent GOAWAY");
                self.going_away = Some(self.going_away.map_or(last, |old| old.min(last)));
                // Streams above `last` were not processed, says the upstream. One it has
                // answered contradicts that: it is not refused (a refusal would have the
                // request sent again, to run twice), a whole answer stands, and a partial
                // one fails, since no more of it is coming.
                let refused: Vec<u32> = self
                    .streams
                    .iter()
                    .filter(|(id, state)| **id > last && !state.recv_closed)
                    .map(|(id, _)| *id)
                    .collect();
                for id in refused {
                    if let Some(state) = self.streams.get_mut(&id) {
                        state.failure.get_or_insert(match state.head {
                            Head::Awaiting => Failure::Refused,
                            _ => Failure::Violation("GOAWAY below a stream it had answered".into()),
                        });
                        state.send_closed = true;
                        state.wake();
                    }
                    self.settle(id);
                }
                // Requests waiting for a stream slot would otherwise wait for the streams
                // below `last` to end (a long stream: for ever); they learn now that this
                // connection opens nothing more, and go to another.
                self.wake_open_waiters();
                Ok(())
            }
            WINDOW_UPDATE => {
                if payload.len() != 4 {
                    return Err((
                        h2::Reason::FRAME_SIZE_ERROR,
                        "malformed WINDOW_UPDATE".into(),
                    ));
                }
                let increment = i64::from(be_u32(payload) & LAST_STREAM_ID);
                if stream == 0 {
                    if increment == 0 {
                        return Err(protocol("zero WINDOW_UPDATE"));
                    }
                    self.send_window += increment;
                    if self.send_window > MAX_WINDOW {
                        return Err((
                            h2::Reason::FLOW_CONTROL_ERROR,
                            "WINDOW_UPDATE overflows the connection's window".into(),
                        ));
                    }
                    // Not a walk over every stream per update: a flood of tiny updates
                    // would cost that many walks.
                    if std::mem::take(&mut self.senders_parked) {
                        for state in self.streams.values_mut() {
                            if let Some(waker) = state.send_waker.take() {
                                waker.wake();
                            }
                        }
                    }
                } else if let Some(state) = self.streams.get_mut(&stream) {
                    // A stream closed both ways (kept only until its caller has read it) or
                    // already reset takes no more flow control: RFC 9113 §5.1 lets
                    // WINDOW_UPDATE arrive on a closed stream, to be ignored. Ignored, a stray
                    // one cannot turn a finished response into an error, nor a run of them
                    // make us queue a reset for each.
                    if (state.send_closed && state.recv_closed) || state.failure.is_some() {
                        return Ok(());
                    }
                    // RFC 9113 §6.9: a zero increment is a stream error PROTOCOL_ERROR, a
                    // window past 2^31-1 one of FLOW_CONTROL_ERROR (§6.9.1).
                    state.send_window += increment;
                    if increment == 0 {
                        self.violation(stream, h2::Reason::PROTOCOL_ERROR, "zero WINDOW_UPDATE");
                    } else if state.send_window > MAX_WINDOW {
                        self.violation(
                            stream,
                            h2::Reason::FLOW_CONTROL_ERROR,
                            "WINDOW_UPDATE overflows the stream's window",
                        );
                    } else if let Some(waker) = state.send_waker.take() {
                        waker.wake();
                    }
                }
                Ok(())
            }
            PUSH_PROMISE => Err(protocol("PUSH_PROMISE though push is off")),
            // PRIORITY and unknown frame types are ignored, as RFC 9113 asks.
            _ => Ok(()),
        }
    }

    pub(crate) fn data(
        &mut self,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> Result<(), (h2::Reason, String)> {
        if stream == 0 {
            return Err(protocol("DATA on stream 0"));
        }
        let length = payload.len() as i64;
        self.recv_window -= length;
        if self.recv_window < 0 {
            return Err((
                h2::Reason::FLOW_CONTROL_ERROR,
                "upstream overran our window".into(),
            ));
        }
        let data = unpad(flags, payload, 0)?;
        let padding = (payload.len() - data.len()) as u32;
        // Padding, and frames for streams we no longer track, are credited back at once.
        let mut credit_now = padding;
        let end_stream = flags & END_STREAM != 0;
        match self.streams.get_mut(&stream) {
            Some(state) if state.failure.is_none() => {
                if state.recv_closed || matches!(state.head, Head::Awaiting) {
                    credit_now += data.len() as u32;
                    let (reason, what) = if state.recv_closed {
                        (h2::Reason::STREAM_CLOSED, "DATA after END_STREAM")
                    } else {
                        (h2::Reason::PROTOCOL_ERROR, "DATA before the response head")
                    };
                    self.violation(stream, reason, what);
                } else {
                    state.recv_window -= length;
                    if state.recv_window < 0 {
                        credit_now += data.len() as u32;
                        self.violation(
                            stream,
                            h2::Reason::FLOW_CONTROL_ERROR,
                            "DATA past the stream's window",
                        );
                    } else if !state.length_due.is_none_or(|due| {
                        data.len() as u64 <= due && (!end_stream || data.len() as u64 == due)
                    }) {
                        credit_now += data.len() as u32;
                        self.violation(
                            stream,
                            h2::Reason::PROTOCOL_ERROR,
                            "DATA not adding up to the content-length",
                        );
                    } else {
                        if let Some(due) = state.length_due.as_mut() {
                            *due -= data.len() as u64;
                        }
                        if !data.is_empty() {
                            match state.data.back_mut() {
                                Some(last) if last.len() + data.len() <= COALESCE_LIMIT => {
                                    last.extend_from_slice(data)
                                }
                                _ => {
                                    // Room for a few more small frames without regrowing.
                                    let mut chunk = BytesMut::with_capacity(data.len().max(1024));
                                    chunk.extend_from_slice(data);
                                    state.data.push_back(chunk);
                                }
                            }
                            self.buffered_arrived(data.len());
                        }
                        if padding > 0 && !end_stream {
                            self.credit_stream(stream, padding);
                        }
                        self.received(stream, end_stream);
                    }
                }
            }
            _ => credit_now += data.len() as u32,
        }
        self.credit_connection(credit_now);
        Ok(())
    }

    /// Decodes a complete header block (always: the HPACK table must stay in step) and
    /// hands it to its stream as the response head or as trailers.
    pub(crate) fn header_block_done(
        &mut self,
        stream: u32,
        end_stream: bool,
    ) -> Result<(), (h2::Reason, String)> {
        let block = std::mem::take(&mut self.header_block);
        let decoded = decode_response_block(&mut self.decoder, &block, self.settings.header_limits);
        self.header_block = block;
        let DecodedBlock {
            status,
            fields,
            problem,
        } = decoded?;
        let Some(state) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if state.failure.is_some() || state.recv_closed {
            return Ok(());
        }
        if let Some((reason, what)) = problem {
            self.violation(stream, reason, what);
            return Ok(());
        }
        match state.head {
            Head::Awaiting => match status {
                // Informational heads are not passed on; the final head follows. HTTP/2 has
                // no 101.
                Some(status)
                    if status.is_informational()
                        && status != StatusCode::SWITCHING_PROTOCOLS
                        && !end_stream =>
                {
                    return Ok(())
                }
                Some(status) if !status.is_informational() => {
                    let Ok(length) = content_length(&fields) else {
                        self.violation(
                            stream,
                            h2::Reason::PROTOCOL_ERROR,
                            "a malformed content-length",
                        );
                        return Ok(());
                    };
                    // No body follows a HEAD request's response, a 204 or a 304, whatever
                    // length they name (that of the body a GET would get), or without one.
                    let bodiless = state.head_request
                        || status == StatusCode::NO_CONTENT
                        || status == StatusCode::NOT_MODIFIED;
                    let tunnel = state.connect_request && status.is_success();
                    state.length_due = if bodiless {
                        Some(0)
                    } else {
                        length.filter(|_| !tunnel)
                    };
                    if end_stream && state.length_due.is_some_and(|due| due > 0) {
                        self.violation(
                            stream,
                            h2::Reason::PROTOCOL_ERROR,
                            "no DATA for the content-length",
                        );
                        return Ok(());
                    }
                    let mut response = Response::new(());
                    *response.status_mut() = status;
                    *response.version_mut() = Version::HTTP_2;
                    *response.headers_mut() = fields;
                    state.head = Head::Arrived(response);
                }
                _ => {
                    self.violation(
                        stream,
                        h2::Reason::PROTOCOL_ERROR,
                        "response head without a final :status",
                    );
                    return Ok(());
                }
            },
            Head::Arrived(_) | Head::Delivered => {
                if status.is_some() || !end_stream {
                    self.violation(
                        stream,
                        h2::Reason::PROTOCOL_ERROR,
                        "a second head, or trailers without END_STREAM",
                    );
                    return Ok(());
                }
                if state.length_due.is_some_and(|due| due > 0) {
                    self.violation(
                        stream,
                        h2::Reason::PROTOCOL_ERROR,
                        "trailers before the content-length's DATA",
                    );
                    return Ok(());
                }
                state.trailers = Some(fields);
            }
        }
        self.received(stream, end_stream);
        Ok(())
    }

    pub(crate) fn wake_open_waiters(&mut self) {
        for waker in self.open_waiters.drain(..) {
            waker.wake();
        }
    }

    /// Resets a stream from our side (a protocol violation by the upstream, or our cancel).
    pub(crate) fn reset_stream(&mut self, stream: u32, reason: h2::Reason) {
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        if state.failure.is_none() {
            state.failure = Some(Failure::Reset(reason));
        }
        state.send_closed = true;
        state.wake();
        self.out.frame_header(4, RST_STREAM, 0, stream);
        self.out
            .small
            .extend_from_slice(&u32::from(reason).to_be_bytes());
        self.settle(stream);
        self.wake_driver();
    }

    /// Resets a stream for the upstream's violation (a stream error): its caller hears
    /// "upstream protocol error"; the connection and its other streams go on.
    pub(crate) fn violation(&mut self, stream: u32, reason: h2::Reason, what: &str) {
        tracing::debug!(stream, ?reason, what, "upstream h2 stream error");
        if let Some(state) = self.streams.get_mut(&stream) {
            if state.failure.is_none() {
                state.failure = Some(Failure::Violation(format!("{what} ({reason:?})").into()));
            }
        }
        self.reset_stream(stream, reason);
    }

    /// Ends the connection: GOAWAY with `reason`, every unfinished stream failed.
    pub(crate) fn connection_error(&mut self, reason: h2::Reason, text: String) {
        tracing::debug!(?reason, %text, "upstream h2 protocol error");
        let last = self.next_id.saturating_sub(2);
        let failure = Failure::Violation(format!("{text} ({reason:?})").into());
        let text = format!("upstream h2 protocol error: {text}");
        self.out.frame_header(8 + text.len(), GOAWAY, 0, 0);
        self.out.small.extend_from_slice(&last.to_be_bytes());
        self.out
            .small
            .extend_from_slice(&u32::from(reason).to_be_bytes());
        self.out.small.extend_from_slice(text.as_bytes());
        // Best effort: the GOAWAY goes out if the socket takes it now.
        self.write_out_here();
        self.fail(failure);
    }

    /// Fails the connection and every stream whose response is not complete.
    pub(crate) fn fail(&mut self, failure: Failure) {
        if self.failure.is_none() {
            self.failure = Some(failure.clone());
        }
        // A connection that ends before the upstream sent its preface (a listener closed
        // with connections still in its accept queue, a pod that accepts and never speaks)
        // processed none of its streams: they are refused, and may be sent elsewhere.
        let failure = match failure {
            Failure::Connection(_) if !self.peer_settings_seen => Failure::Refused,
            other => other,
        };
        for state in self.streams.values_mut() {
            if !state.recv_closed && state.failure.is_none() {
                state.failure = Some(failure.clone());
            }
            state.send_closed = true;
            state.wake();
            if state.open {
                state.open = false;
                self.open_streams -= 1;
            }
        }
        self.wake_open_waiters();
        self.wake_driver();
    }

    pub(crate) fn put_header_block(&mut self, stream: u32, block: &[u8], end_stream: bool) {
        wire::put_header_block(
            &mut self.out.small,
            self.peer_max_frame,
            stream,
            block,
            end_stream,
        );
    }
}

pub(crate) fn protocol(text: &str) -> (h2::Reason, String) {
    (h2::Reason::PROTOCOL_ERROR, text.to_string())
}

pub(crate) fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The payload without padding (and without the priority fields HEADERS may carry).
pub(crate) fn unpad(flags: u8, payload: &[u8], skip: usize) -> Result<&[u8], (h2::Reason, String)> {
    wire::unpad(flags, payload, skip).ok_or_else(|| protocol("padding longer than the frame"))
}
