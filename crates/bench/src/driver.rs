//! Running workers for a fixed time or count, closed or open loop, with a progress line.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::{Latency, Report};

/// How long and how fast a run goes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub duration: Duration,
    pub requests: Option<u64>,
    /// Operations per second in total; `None`: closed loop (each worker as fast as it can).
    pub rate: Option<f64>,
    pub quiet: bool,
}

/// State every worker shares: the clock, the schedule, and live counters for progress.
pub struct Shared {
    plan: Plan,
    start: Instant,
    deadline: Instant,
    issued: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    stopped: AtomicBool,
    /// Tells this run's thread histograms from an earlier run's in the same process.
    run_id: u64,
    /// Every thread's latency histogram, merged at the end.
    histograms: Mutex<Vec<SharedHistogram>>,
}

/// A latency histogram shared by the workers of one thread.
type SharedHistogram = Arc<Mutex<Histogram<u64>>>;

/// The longest latency a histogram holds: an hour, in µs.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Latency in µs, 3 significant digits, up to MAX_LATENCY_US.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

thread_local! {
    /// This thread's histogram for the run it last recorded for. One per thread, not one per
    /// worker: hundreds of workers' histograms (~190 KB each) made every record a cache miss
    /// (5.7 % of the generator's CPU on unary, by perf).
    static THREAD_HISTOGRAM: RefCell<Option<(u64, SharedHistogram)>> =
        const { RefCell::new(None) };
}

impl Shared {
    pub fn new(plan: Plan) -> Arc<Self> {
        let start = Instant::now();
        Arc::new(Shared {
            deadline: start + plan.duration,
            plan,
            start,
            issued: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            run_id: {
                static RUNS: AtomicU64 = AtomicU64::new(0);
                RUNS.fetch_add(1, Ordering::Relaxed)
            },
            histograms: Mutex::new(Vec::new()),
        })
    }

    /// The calling thread's histogram for this run (a worker task that moves to another
    /// thread keeps the one it started with; the lock keeps that correct).
    fn thread_histogram(&self) -> SharedHistogram {
        THREAD_HISTOGRAM.with(|cell| {
            let mut cell = cell.borrow_mut();
            if let Some((run, histogram)) = &*cell {
                if *run == self.run_id {
                    return histogram.clone();
                }
            }
            let histogram = Arc::new(Mutex::new(latency_histogram()));
            self.histograms
                .lock()
                .expect("histogram list")
                .push(histogram.clone());
            *cell = Some((self.run_id, histogram.clone()));
            histogram
        })
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Takes the next operation's ticket: whether to start now, at a scheduled instant (open
    /// loop, ahead of schedule), or not at all (the run is over).
    pub fn claim(&self) -> Slot {
        if self.stopped.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return Slot::Done;
        }
        let ticket = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.plan.requests.is_some_and(|limit| ticket >= limit) {
            return Slot::Done;
        }
        match self.plan.rate {
            None => Slot::Now(Instant::now()),
            Some(rate) => {
                let at = self.start + Duration::from_secs_f64(ticket as f64 / rate);
                if at >= self.deadline {
                    return Slot::Done;
                }
                if Instant::now() >= at {
                    // Behind schedule (every worker was busy: the target's queue): measured
                    // from the schedule, so a stall cannot hide (coordinated omission).
                    return Slot::Now(at);
                }
                // On time: the caller waits for `at`, then measures from the moment the
                // operation starts. The timer wakes on its 1 ms tick after `at`; that
                // lateness is the generator's, not the target's, and counted in it blurred
                // every proxy's p50 by up to a millisecond.
                Slot::At(at)
            }
        }
    }

    /// Waits for the next operation's slot. Returns the instant latency is measured from
    /// (see [`Slot`]), or `None` when the run is over.
    pub async fn next(&self) -> Option<Instant> {
        match self.claim() {
            Slot::Done => None,
            Slot::Now(started) => Some(started),
            Slot::At(at) => {
                tokio::time::sleep_until(at.into()).await;
                Some(Instant::now())
            }
        }
    }

    /// Ends the run early (a fatal setup error, for example).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

/// What a claimed ticket says.
pub enum Slot {
    /// The run is over: start nothing.
    Done,
    /// Start now; latency counts from this instant (now, or the missed schedule).
    Now(Instant),
    /// Open loop, ahead of schedule: wait until this instant, then start and count from then.
    At(Instant),
}

/// One worker's results, merged into the report at the end.
pub struct Recorder {
    latency_us: SharedHistogram,
    ok: u64,
    units: u64,
    errors: BTreeMap<String, u64>,
    shared: Arc<Shared>,
}

impl Recorder {
    pub fn new(shared: Arc<Shared>) -> Self {
        Recorder {
            latency_us: shared.thread_histogram(),
            ok: 0,
            units: 0,
            errors: BTreeMap::new(),
            shared,
        }
    }

    /// A successful operation that started (or was scheduled) at `started` and moved
    /// `units` units of work (messages, connections…).
    pub fn ok(&mut self, started: Instant, units: u64) {
        let micros = started.elapsed().as_micros().max(1) as u64;
        let _ = self
            .latency_us
            .lock()
            .expect("latency histogram")
            .record(micros.min(MAX_LATENCY_US));
        self.ok += 1;
        self.units += units;
        self.shared.ok.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
        self.shared.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints `elapsed, ok/s, errors` once a second on stderr until the run ends.
pub fn spawn_progress(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if shared.plan.quiet {
            return;
        }
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let ok = shared.ok.load(Ordering::Relaxed);
            eprint!(
                "\r{:>5.1}s  {:>10} ok/s  {:>8} errors   ",
                shared.start.elapsed().as_secs_f64(),
                ok - last,
                shared.errors.load(Ordering::Relaxed)
            );
            last = ok;
            if Instant::now() >= shared.deadline || shared.stopped.load(Ordering::Relaxed) {
                eprintln!();
                return;
            }
        }
    })
}

impl From<&crate::CommonArgs> for Plan {
    fn from(common: &crate::CommonArgs) -> Self {
        Plan {
            duration: common.duration,
            requests: common.requests,
            rate: common.rate,
            quiet: common.quiet,
        }
    }
}

/// Waits for every worker, ends the run and the progress line.
pub async fn collect(
    shared: &Shared,
    progress: tokio::task::JoinHandle<()>,
    workers: Vec<tokio::task::JoinHandle<Recorder>>,
) -> Result<Vec<Recorder>, String> {
    let mut recorders = Vec::with_capacity(workers.len());
    for worker in workers {
        recorders.push(worker.await.map_err(|e| e.to_string())?);
    }
    shared.stop();
    let _ = progress.await;
    Ok(recorders)
}

/// What a report says about the run besides the measurements.
pub struct Labels {
    pub workload: String,
    pub target: String,
    pub connections: usize,
    pub streams: usize,
    pub units: &'static str,
}

/// Merges worker results into the report.
pub fn finish(shared: &Shared, recorders: Vec<Recorder>, labels: Labels) -> Report {
    let elapsed = shared.start.elapsed().as_secs_f64();
    let mut latency = latency_histogram();
    for histogram in shared.histograms.lock().expect("histogram list").iter() {
        let _ = latency.add(&*histogram.lock().expect("latency histogram"));
    }
    let mut ok = 0;
    let mut units = 0;
    let mut errors = BTreeMap::new();
    for recorder in recorders {
        ok += recorder.ok;
        units += recorder.units;
        for (kind, count) in recorder.errors {
            *errors.entry(kind).or_insert(0) += count;
        }
    }
    let per_second = |n: u64| {
        if elapsed > 0.0 {
            n as f64 / elapsed
        } else {
            0.0
        }
    };
    Report {
        workload: labels.workload,
        target: labels.target,
        connections: labels.connections,
        streams: labels.streams,
        rate: shared.plan.rate,
        elapsed_s: elapsed,
        ok,
        errors,
        ops_per_s: per_second(ok),
        units: labels.units,
        units_per_s: per_second(units),
        latency_us: Latency::from_histogram(&latency),
        spread: None,
    }
}
