//! Lines for people and scripts on stdout ("listening on", the demo's banner), written by a
//! thread of their own so the control plane never waits for stdout. The access log shares
//! stdout: when whoever reads it stops, a write blocks, and the control-plane thread (the
//! admin server's `/healthz`, signals, reloads) must not block with it. Lines keep their
//! order; a closed stdout (EPIPE) loses them quietly.

use std::io::Write as _;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

/// Queues `line` (a newline is added) for stdout.
pub fn announce(line: String) {
    static LINES: OnceLock<Option<Mutex<Sender<String>>>> = OnceLock::new();
    let sender = LINES.get_or_init(|| {
        let (sender, lines) = channel::<String>();
        let started = std::thread::Builder::new()
            .name("pachgate-announce".into())
            .spawn(move || {
                for line in lines {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{line}");
                    let _ = stdout.flush();
                }
            });
        started.ok().map(|_| Mutex::new(sender))
    });
    match sender {
        Some(sender) => {
            let sent = sender
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .send(line);
            drop(sent);
        }
        // No thread to be had: written here, as before.
        None => {
            let _ = writeln!(std::io::stdout(), "{line}");
        }
    }
}
