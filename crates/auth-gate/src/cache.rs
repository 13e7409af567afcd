//! The token cache: answers from pachd kept for a while, keyed by SHA-256 of the token (the
//! cache never holds a token), bounded, and single flight — concurrent first requests with
//! the same token wait for one WhoAmI call. Beside it, the tokens pachd has vouched for,
//! until they expire, for the failed-authentication limiter's exemption.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::OnceCell;

use crate::{PachydermAuthSettings, WhoAmIAnswer};

type Key = [u8; 32];

/// The key under which the answer for "no token at all" is kept (whether auth is active).
/// No request's token is empty: an empty `authn-token` counts as none.
pub(crate) const NO_TOKEN: &str = "";

struct Slot {
    /// Filled once by the first caller; later callers wait on it.
    answer: OnceCell<(WhoAmIAnswer, Instant)>,
}

pub struct TokenCache {
    capacity: usize,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    vouched: Vouched,
}

/// Tokens pachd last answered valid, with their expiration (none: the token does not
/// expire), kept past the cache's `cache_ttl`: the failed-authentication limiter must not
/// refuse them when their cached answer has aged, or a user behind an address another
/// client drained would be locked out once a minute is up. pachd is still asked again as
/// usual; a later rejection or expiry answer forgets the token. Only tokens pachd accepted
/// come in, so a guesser cannot fill it; bounded all the same.
struct Vouched {
    capacity: usize,
    until: Mutex<HashMap<Key, Option<SystemTime>>>,
}

impl Vouched {
    fn record(&self, key: Key, answer: &WhoAmIAnswer) {
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            WhoAmIAnswer::Valid { expiration, .. } => {
                if until.len() >= self.capacity && !until.contains_key(&key) {
                    let now = SystemTime::now();
                    until.retain(|_, expires| !matches!(expires, Some(at) if *at <= now));
                    if until.len() >= self.capacity {
                        // Valid tokens only, each one pachd issued: dropping some costs their
                        // holders the exemption, nothing more.
                        let excess: Vec<Key> = until
                            .keys()
                            .take(until.len() - self.capacity + self.capacity / 10 + 1)
                            .copied()
                            .collect();
                        for key in excess {
                            until.remove(&key);
                        }
                    }
                }
                until.insert(key, *expiration);
            }
            WhoAmIAnswer::Unauthenticated(_) | WhoAmIAnswer::Expired(_) => {
                until.remove(&key);
            }
            // Says nothing about the token.
            WhoAmIAnswer::AuthNotActive | WhoAmIAnswer::Unavailable(_) => {}
        }
    }

    fn holds(&self, key: &Key) -> bool {
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until
            .get(key)
            .is_some_and(|expires| !matches!(expires, Some(at) if *at <= SystemTime::now()))
    }
}

fn key(token: &str) -> Key {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// How long an answer may be reused: valid tokens for `cache_ttl` but never past their
/// expiration; rejections briefly; an unreachable pachd not at all.
fn lifetime(answer: &WhoAmIAnswer, settings: &PachydermAuthSettings) -> Option<Instant> {
    let now = Instant::now();
    match answer {
        WhoAmIAnswer::Valid { expiration, .. } => {
            let mut ttl = settings.cache_ttl;
            if let Some(expiration) = expiration {
                let left = expiration
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                ttl = ttl.min(left);
            }
            (!ttl.is_zero()).then(|| now + ttl)
        }
        WhoAmIAnswer::Unauthenticated(_)
        | WhoAmIAnswer::Expired(_)
        | WhoAmIAnswer::AuthNotActive => Some(now + settings.negative_cache_ttl),
        WhoAmIAnswer::Unavailable(_) => None,
    }
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity: capacity.max(1),
            slots: Mutex::new(HashMap::new()),
            vouched: Vouched {
                capacity: capacity.max(1),
                until: Mutex::new(HashMap::new()),
            },
        }
    }

    /// The cached answer for `token`, or the answer of one `check` shared by all callers
    /// that arrive while it runs. A `check` that fails (it did not ask pachd) answers only
    /// its own caller: the next caller waiting, if any, runs its own.
    pub async fn get_or_check<F, Fut, E>(
        &self,
        token: &str,
        settings: &PachydermAuthSettings,
        check: F,
    ) -> Result<WhoAmIAnswer, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<WhoAmIAnswer, E>>,
    {
        let key = key(token);
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = slots.get(&key).filter(|slot| match slot.answer.get() {
                None => true, // a check is in flight: join it
                Some((_, until)) => *until > Instant::now(),
            });
            match fresh {
                Some(slot) => slot.clone(),
                None => {
                    if slots.len() >= self.capacity {
                        evict(&mut slots, self.capacity);
                    }
                    let slot = Arc::new(Slot {
                        answer: OnceCell::new(),
                    });
                    slots.insert(key, slot.clone());
                    slot
                }
            }
        };
        let waiting = Waiting {
            cache: self,
            key,
            slot,
        };
        let (answer, _) = waiting
            .slot
            .answer
            .get_or_try_init(|| async {
                let answer = check().await?;
                self.vouched.record(key, &answer);
                // Unreachable pachd: answer this wave of callers, then forget it.
                let until = lifetime(&answer, settings).unwrap_or_else(Instant::now);
                Ok((answer, until))
            })
            .await?;
        Ok(answer.clone())
    }

    /// Whether pachd's last answer for `token` was valid and its expiration has not passed,
    /// however long ago it was asked.
    pub fn vouches_for(&self, token: &str) -> bool {
        self.vouched.holds(&key(token))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A caller's hold on a slot while it waits for (or makes) the answer. A slot left without
/// an answer — its check failed without asking (the failed-auth budget was out) or its
/// caller went away — is removed once nobody else waits on it: each guess would otherwise
/// leave an empty slot behind for good.
struct Waiting<'a> {
    cache: &'a TokenCache,
    key: Key,
    slot: Arc<Slot>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.slot.answer.initialized() {
            return;
        }
        let mut slots = self.cache.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock nobody can take a new hold: two holds are the map's and ours.
        let ours = slots
            .get(&self.key)
            .is_some_and(|held| Arc::ptr_eq(held, &self.slot));
        if ours && Arc::strong_count(&self.slot) == 2 {
            slots.remove(&self.key);
        }
    }
}

/// Drops expired answers and unanswered slots nobody waits on; if the cache is still full,
/// finished ones until a tenth is free (amortises the scan): rejections first, then valid
/// answers, the auth-state answer (no token) last. A flood of distinct bad tokens (guesses
/// from many addresses) then pushes out other guesses, not the answers that spare valid
/// users and pachd a WhoAmI per call.
fn evict(slots: &mut HashMap<Key, Arc<Slot>>, capacity: usize) {
    let now = Instant::now();
    slots.retain(|_, slot| match slot.answer.get() {
        Some((_, until)) => *until > now,
        None => Arc::strong_count(slot) > 1,
    });
    let target = capacity - capacity / 10 - 1;
    let no_token = key(NO_TOKEN);
    let rank = |key: &Key, answer: &WhoAmIAnswer| match answer {
        _ if *key == no_token => 2,
        WhoAmIAnswer::Valid { .. } => 1,
        _ => 0,
    };
    for dropped_rank in 0..=2 {
        if slots.len() <= target {
            return;
        }
        let excess: Vec<Key> = slots
            .iter()
            .filter(|(key, slot)| {
                slot.answer
                    .get()
                    .is_some_and(|(answer, _)| rank(key, answer) == dropped_rank)
            })
            .map(|(k, _)| *k)
            .take(slots.len() - target)
            .collect();
        for k in excess {
            slots.remove(&k);
        }
    }
}
