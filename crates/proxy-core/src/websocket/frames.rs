//! Websocket frame headers as the tunnel reads them (where one frame ends), and the close
//! frame it sends at the drain deadline. Payloads are never inspected.

/// Where a byte stream of websocket frames is: in a frame header, in a payload, or exactly
/// between two frames. Only headers are read (RFC 6455 §5.2).
#[derive(Default)]
pub(super) struct FrameTracker {
    header: [u8; 14],
    header_len: usize,
    payload_left: u64,
    /// A close frame has passed.
    pub(super) close_seen: bool,
}

impl FrameTracker {
    pub(super) fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// Consumes `data` up to the end of the current frame (or all of it); returns how many
    /// bytes were consumed.
    pub(super) fn step(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() {
            if self.payload_left > 0 {
                let take = self.payload_left.min((data.len() - used) as u64);
                used += take as usize;
                self.payload_left -= take;
                if self.payload_left == 0 {
                    return used;
                }
                continue;
            }
            self.header[self.header_len] = data[used];
            self.header_len += 1;
            used += 1;
            if self.header_len < 2 || self.header_len < self.header_size() {
                continue;
            }
            self.payload_left = self.payload_size();
            self.close_seen |= self.header[0] & 0x0f == 0x8;
            self.header_len = 0;
            if self.payload_left == 0 {
                return used;
            }
        }
        used
    }

    fn header_size(&self) -> usize {
        let masked = self.header[1] & 0x80 != 0;
        let length_bytes = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + length_bytes + if masked { 4 } else { 0 }
    }

    fn payload_size(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("eight bytes")),
            short => short as u64,
        }
    }
}

/// Close frames with status 1001 (going away), as a server sends them (unmasked) and as a
/// client must (masked, RFC 6455 §5.3).
pub(super) struct GoingAway {
    payload: Vec<u8>,
}

impl GoingAway {
    pub(super) fn new() -> Self {
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"pachgate is shutting down");
        GoingAway { payload }
    }

    pub(super) fn unmasked(&self) -> Vec<u8> {
        let mut frame = vec![0x88, self.payload.len() as u8];
        frame.extend_from_slice(&self.payload);
        frame
    }

    pub(super) fn masked(&self) -> Vec<u8> {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(self.payload.len());
        let key = (hasher.finish() as u32).to_be_bytes();
        let mut frame = vec![0x88, 0x80 | self.payload.len() as u8];
        frame.extend_from_slice(&key);
        frame.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_found_across_reads() {
        // A masked 3-byte text frame, an unmasked 300-byte binary frame (16-bit length),
        // then an empty ping.
        let mut stream = vec![0x81, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3];
        stream.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        stream.extend(std::iter::repeat_n(7u8, 300));
        stream.extend_from_slice(&[0x89, 0x00]);
        let mut boundaries = Vec::new();
        let mut tracker = FrameTracker::default();
        let mut offset = 0;
        for chunk in stream.chunks(5) {
            let mut used = 0;
            while used < chunk.len() {
                used += tracker.step(&chunk[used..]);
                if tracker.at_boundary() {
                    boundaries.push(offset + used);
                }
            }
            offset += chunk.len();
        }
        assert_eq!(boundaries, vec![9, 9 + 4 + 300, stream.len()]);
        assert!(!tracker.close_seen);
        tracker.step(&GoingAway::new().unmasked());
        assert!(tracker.close_seen && tracker.at_boundary());
    }

    #[test]
    fn close_frames_carry_1001_and_the_client_one_is_masked() {
        let going_away = GoingAway::new();
        let plain = going_away.unmasked();
        assert_eq!(&plain[..4], &[0x88, 27, 0x03, 0xe9]);
        let masked = going_away.masked();
        assert_eq!(masked[1], 0x80 | 27);
        let key = &masked[2..6];
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(unmasked, plain[2..]);
    }
}
