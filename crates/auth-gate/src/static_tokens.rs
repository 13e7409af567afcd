//! `auth = "token"`: static bearer tokens for routes that front something other than pachd.
//! The file holds SHA-256 hashes (hex, one per line, `#` comments, an optional label after
//! the hash), never tokens. It is re-read when it changes; a broken file is refused with a
//! log line and the previous set keeps working.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::{Decision, DenyReason, TokenLookup};

type Hash = [u8; 32];

/// How often the file's modification time is looked at, at most.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

pub struct StaticTokens {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    hashes: HashSet<Hash>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// Parses a hash file; the error names the line.
pub fn parse_hash_file(text: &str) -> Result<HashSet<Hash>, String> {
    let mut hashes = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let hex = line.split_whitespace().next().unwrap_or("");
        let hash = decode_hex(hex).ok_or_else(|| {
            format!(
                "line {}: expected a SHA-256 hash as 64 hex digits (e.g. from `printf %s TOKEN | sha256sum`)",
                number + 1
            )
        })?;
        hashes.insert(hash);
    }
    Ok(hashes)
}

fn decode_hex(hex: &str) -> Option<Hash> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

fn load(path: &Path) -> Result<(HashSet<Hash>, Option<SystemTime>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let hashes = parse_hash_file(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((hashes, modified))
}

impl StaticTokens {
    /// Loads the file now; a missing or broken file is a configuration error.
    pub fn open(path: &Path) -> Result<Self, String> {
        let (hashes, modified) = load(path)?;
        Ok(StaticTokens {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                hashes,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    pub fn check(&self, token: TokenLookup<'_>) -> Decision {
        let token = match token {
            TokenLookup::Missing | TokenLookup::Blank => {
                return Decision::Deny(DenyReason::MissingToken)
            }
            TokenLookup::Ambiguous => return Decision::Deny(DenyReason::AmbiguousToken),
            TokenLookup::Found(token) => token,
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_if_changed(&mut state);
        if state.hashes.contains(digest.as_ref()) {
            Decision::Allow {
                username: None,
                reason: crate::AllowReason::ValidToken,
            }
        } else {
            Decision::Deny(DenyReason::InvalidToken("invalid bearer token".into()))
        }
    }

    fn reload_if_changed(&self, state: &mut State) {
        if state.checked.elapsed() < RECHECK_EVERY {
            return;
        }
        state.checked = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == state.modified {
            return;
        }
        match load(&self.path) {
            Ok((hashes, modified)) => {
                tracing::info!(file = %self.path.display(), tokens = hashes.len(), "token file reloaded");
                state.hashes = hashes;
                state.modified = modified;
            }
            Err(error) => {
                // Keep serving with the previous set; do not retry until the file changes again.
                state.modified = modified;
                tracing::error!(%error, "token file refused; the previous tokens stay in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_files() {
        let good = "# ci robot\nb94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9  hello-world\n\n";
        assert_eq!(parse_hash_file(good).unwrap().len(), 1);
        let bad = "# ok\nnot-a-hash\n";
        assert!(parse_hash_file(bad).unwrap_err().starts_with("line 2:"));
    }

    #[test]
    fn tokens_are_checked_by_hash_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("pachgate-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        let hash = |t: &str| {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
            d.as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        std::fs::write(&file, format!("{}\n", hash("one"))).unwrap();
        let tokens = StaticTokens::open(&file).unwrap();
        assert!(matches!(
            tokens.check(TokenLookup::Found("one".into())),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            tokens.check(TokenLookup::Found("two".into())),
            Decision::Deny(_)
        ));
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(&file, format!("{}\n", hash("two"))).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(
            tokens.check(TokenLookup::Found("two".into())),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            tokens.check(TokenLookup::Found("one".into())),
            Decision::Deny(_)
        ));
        std::fs::write(&file, "garbage\n").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(
            tokens.check(TokenLookup::Found("two".into())),
            Decision::Allow { .. }
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
