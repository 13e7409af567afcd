//! The upstream's SETTINGS as applied to the connection, and the acknowledgements we owe it
//! (for SETTINGS and PINGs), counted until written so that a flood ends the connection.

use pachgate_h2_wire::{
    SETTINGS_ENABLE_CONNECT_PROTOCOL, SETTINGS_ENABLE_PUSH, SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_FRAME_SIZE,
};

use crate::{connection::Inner, frames::protocol, MAX_UNWRITTEN_ACKS, MAX_WINDOW};

impl Inner {
    pub(crate) fn apply_settings(&mut self, payload: &[u8]) -> Result<(), (h2::Reason, String)> {
        if !payload.len().is_multiple_of(6) {
            return Err((h2::Reason::FRAME_SIZE_ERROR, "malformed SETTINGS".into()));
        }
        // Applied to the open streams once per frame, after every entry is read: a frame of
        // thousands of entries must not cost thousands of walks over the streams.
        let mut initial_window = None;
        for entry in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match u16::from_be_bytes([entry[0], entry[1]]) {
                SETTINGS_MAX_CONCURRENT_STREAMS => {
                    self.peer_max_streams = value;
                    self.wake_open_waiters();
                }
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err((h2::Reason::FLOW_CONTROL_ERROR, "initial window".into()));
                    }
                    initial_window = Some(value);
                }
                // RFC 9113 §6.5.2: a server may only say 0.
                SETTINGS_ENABLE_PUSH if value != 0 => {
                    return Err(protocol("SETTINGS_ENABLE_PUSH from a server"));
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(protocol("SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = value as usize;
                }
                // RFC 8441 §3: 0 or 1, and once 1 it may not go back to 0.
                SETTINGS_ENABLE_CONNECT_PROTOCOL => match value {
                    1 => self.peer_connect_protocol = true,
                    0 if !self.peer_connect_protocol => {}
                    _ => return Err(protocol("bad SETTINGS_ENABLE_CONNECT_PROTOCOL")),
                },
                SETTINGS_HEADER_TABLE_SIZE => self.upstream_table.peer_limit(value),
                _ => {}
            }
        }
        if let Some(value) = initial_window {
            let delta = i64::from(value) - i64::from(self.peer_initial_window);
            self.peer_initial_window = value;
            if delta != 0 {
                let mut overflow = false;
                for state in self.streams.values_mut() {
                    state.send_window += delta;
                    overflow |= state.send_window > MAX_WINDOW;
                    if let Some(waker) = state.send_waker.take() {
                        waker.wake();
                    }
                }
                // RFC 9113 §6.9.2: a change that takes any stream's window past 2^31-1
                // is a connection error.
                if overflow {
                    return Err((
                        h2::Reason::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE overflows an open stream's window".into(),
                    ));
                }
            }
        }
        if !self.peer_settings_seen {
            self.peer_settings_seen = true;
            self.upstream_table.settings_seen();
            self.wake_open_waiters();
        }
        Ok(())
    }

    /// Counts an acknowledgement about to be queued; too many unwritten is a flood.
    /// An acknowledgement was just queued. Counted until it is written: an upstream that
    /// asks for them faster than it reads them is flooding us. Acknowledgements that went
    /// out no longer count, however long the queue behind them stays (a long upload to an
    /// upstream that pings as it reads, as gRPC servers' bandwidth probes do).
    pub(crate) fn acknowledged(&mut self) -> Result<(), (h2::Reason, String)> {
        let end = self.written_total + self.out.queued() as u64;
        self.unwritten_acks.push_back(end);
        if self.unwritten_acks.len() > MAX_UNWRITTEN_ACKS {
            // Many frames in one read are not yet a flood: write what is queued, and count
            // only what the upstream leaves unread.
            self.write_out_here();
        }
        if self.unwritten_acks.len() > MAX_UNWRITTEN_ACKS {
            return Err((
                h2::Reason::ENHANCE_YOUR_CALM,
                format!("over {MAX_UNWRITTEN_ACKS} SETTINGS/PING acknowledgements unread"),
            ));
        }
        Ok(())
    }
}
