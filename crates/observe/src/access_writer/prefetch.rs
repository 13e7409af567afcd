//! Warming the shared buffer for the next line: the cache lines it will be formatted into,
//! fetched for writing while the worker goes on. The codebase's `unsafe` blocks are both
//! here: the `PREFETCHW` instruction, and CPUID to learn whether the CPU has it.

/// Asks the core to fetch, for writing, the cache lines the next line will be formatted
/// into, while the worker goes on with other requests.
///
/// Why: those lines were last read by the writer thread, on another core, a batch ago. A
/// store to them waits for the line's ownership, and the lock's release right after the
/// line (a locked instruction, which drains the stores before it) waited for all of them:
/// `perf` put about 0.1 µs a line on that one instruction, a quarter to a third of the log's
/// cost to the worker (benches/README.md, sixth round). A prefetch is not ordered with locked
/// instructions, so it is fetched in the background, and the next line finds its room
/// owned. A plain (read) prefetch did not help: it leaves the line shared with the reader.
#[inline(always)]
pub(super) fn warm_next_room(lines: &[u8], from: usize) {
    #[cfg(target_arch = "x86_64")]
    for at in room_ahead(lines, from) {
        let line = lines[at..].as_ptr();
        // SAFETY: PREFETCHW is a hint (the CPU has it: `can_prefetch_for_write`): it never
        // faults, reads or writes nothing the program sees, and touches no register, flag
        // or stack; `line` points into `lines`.
        unsafe {
            std::arch::asm!(
                "prefetchw [{line}]",
                line = in(reg) line,
                options(nostack, preserves_flags, readonly)
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (lines, from);
}

/// Room past the last line whose cache lines are fetched: a gRPC call's line is about 430
/// bytes.
#[cfg(any(target_arch = "x86_64", test))]
const WARM_AHEAD: usize = 512;

/// Offsets into `lines`, one in each cache line (by address: the buffer need not be
/// aligned) of the [`WARM_AHEAD`] bytes from `from` on, all within `lines`.
#[cfg(any(target_arch = "x86_64", test))]
#[inline(always)]
fn room_ahead(lines: &[u8], from: usize) -> impl Iterator<Item = usize> {
    // Walked by address from the start of `from`'s cache line, which `from` itself stands
    // for (that start may lie before the buffer's); none when no room is left.
    let base = lines.as_ptr() as usize;
    let start = base + from;
    let end = base + lines.len().min(from + WARM_AHEAD);
    let first_line = if start < end { start & !63 } else { end };
    (first_line..end)
        .step_by(64)
        .map(move |line| line.max(start) - base)
}

/// Whether the CPU reports `PREFETCHW` (CPUID 8000_0001h, ECX bit 8). Without it, the next
/// line's room is not warmed.
pub(super) fn can_prefetch_for_write() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `__cpuid` is a safe fn in recent Rust, an unsafe one in older releases
        // (rust-version is 1.80).
        #[allow(unused_unsafe)]
        // SAFETY: every x86_64 CPU has CPUID and its leaf 8000_0001h (which reports long
        // mode itself).
        let extended = unsafe { std::arch::x86_64::__cpuid(0x8000_0001) };
        extended.ecx & (1 << 8) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_ahead_names_each_cache_line_of_the_next_512_bytes_once_within_the_buffer() {
        let backing = vec![0u8; 4096 + 64];
        // Every alignment of the buffer against cache lines, whatever the allocator gives.
        for (len, skew) in [0, 1, 63, 64, 65, 511, 512, 513, 1000, 4096]
            .into_iter()
            .flat_map(|len| (0..64).map(move |skew| (len, skew)))
        {
            let lines = &backing[skew..skew + len];
            let cache_line = |at: usize| (lines.as_ptr() as usize + at) / 64;
            for from in 0..=len {
                let offsets: Vec<usize> = room_ahead(lines, from).collect();
                assert!(
                    offsets.iter().all(|&at| at < len),
                    "{len} {skew} {from}: {offsets:?}"
                );
                let fetched: Vec<usize> = offsets.iter().map(|&at| cache_line(at)).collect();
                let end = len.min(from + WARM_AHEAD);
                let mut wanted: Vec<usize> = (from..end).map(cache_line).collect();
                wanted.dedup();
                assert_eq!(fetched, wanted, "{len} {skew} {from}");
            }
        }
    }
}
