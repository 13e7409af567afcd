//! Lines for people and scripts on stdout ("listening on", the demo's banner), written by a
//! thread of their own so the control plane never waits for stdout. The access log shares
//! stdout: when whoever reads it stops, a write blocks, and the control-plane thread (the
//! admin server's `/healthz`, signals, reloads) must not block with it. Lines keep their
//! order; a closed stdout (EPIPE) loses them quietly. [`Written`], dropped at the end of
//! `main`, gives queued lines a moment to reach stdout before the process exits.

use std::io::Write as _;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long an exit waits for queued lines (a stdout nobody reads must not hold it long).
const EXIT_WAIT: Duration = Duration::from_secs(2);

enum Message {
    Line(String),
    /// Answered once every line before it is written.
    Written(Sender<()>),
}

static QUEUE: OnceLock<Option<Mutex<Sender<Message>>>> = OnceLock::new();

fn queue() -> &'static Option<Mutex<Sender<Message>>> {
    QUEUE.get_or_init(|| {
        let (sender, messages) = channel::<Message>();
        let started = std::thread::Builder::new()
            .name("pachgate-announce".into())
            .spawn(move || {
                for message in messages {
                    match message {
                        Message::Line(line) => {
                            let mut stdout = std::io::stdout().lock();
                            let _ = writeln!(stdout, "{line}");
                            let _ = stdout.flush();
                        }
                        Message::Written(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        started.ok().map(|_| Mutex::new(sender))
    })
}

fn send(sender: &Mutex<Sender<Message>>, message: Message) -> bool {
    sender
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send(message)
        .is_ok()
}

/// Queues `line` (a newline is added) for stdout.
pub fn announce(line: String) {
    match queue() {
        Some(sender) => {
            send(sender, Message::Line(line));
        }
        // No thread to be had: written here, as before.
        None => {
            let _ = writeln!(std::io::stdout(), "{line}");
        }
    }
}

/// Waits, when dropped, up to [`EXIT_WAIT`] for the lines queued so far to be written.
pub struct Written;

impl Drop for Written {
    fn drop(&mut self) {
        let Some(Some(sender)) = QUEUE.get() else {
            return;
        };
        let (done, written) = channel();
        if send(sender, Message::Written(done)) {
            let _ = written.recv_timeout(EXIT_WAIT);
        }
    }
}
