//! Per-blob progress for `wharf copy | push | pull`: on a terminal, bars (indicatif) with bytes, speed and ETA for
//! each blob in flight and a last word for each (copied, compressed, skipped, mounted); without one (CI logs), one
//! line per blob as it starts and one as it ends, with its size, what became of it and how long it took. Off with
//! `--quiet` or `--json`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wharf_client::Progress;
use wharf_oci::Digest;

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

/// The progress a copy shows on stderr: bars on a terminal, lines otherwise.
pub fn on_stderr() -> Arc<dyn Progress> {
    match Bars::for_terminal() {
        Some(b) => b,
        None => Arc::new(Lines::default()),
    }
}

/// One line per blob as it starts and as it ends (what CI logs can show).
#[derive(Default)]
pub struct Lines {
    started: Mutex<HashMap<Digest, (u64, std::time::Instant)>>,
}

impl Progress for Lines {
    fn start(&self, digest: &Digest, size: u64) {
        eprintln!("blob {} ({}): started", short(digest), human(size));
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), (size, std::time::Instant::now()));
    }

    fn advance(&self, _digest: &Digest, _bytes: u64) {}

    fn finish(&self, digest: &Digest, how: &'static str) {
        let entry = self.started.lock().unwrap_or_else(|p| p.into_inner()).remove(digest);
        let (size, secs) = entry.map_or((0, 0.0), |(size, t)| (size, t.elapsed().as_secs_f64()));
        eprintln!("blob {} ({}): {how} in {secs:.2} s", short(digest), human(size));
    }
}

fn human(bytes: u64) -> String {
    if bytes == 0 {
        return "size unknown".into();
    }
    wharf_dockerfile::context::human_size(bytes)
}

impl Bars {
    /// Bars on stderr when it is a terminal, else `None`.
    pub fn for_terminal() -> Option<Arc<dyn Progress>> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        Some(Arc::new(Bars {
            multi,
            bars: Mutex::new(HashMap::new()),
        }))
    }

    fn bars(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, ProgressBar>> {
        self.bars.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn short(d: &Digest) -> String {
    d.hex().chars().take(12).collect()
}

impl Progress for Bars {
    fn start(&self, digest: &Digest, size: u64) {
        let bar = if size > 0 {
            let b = ProgressBar::new(size);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        } else {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{prefix} {spinner} {bytes:>10} {bytes_per_sec:>12} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        };
        bar.set_prefix(short(digest));
        let bar = self.multi.add(bar);
        self.bars().insert(digest.clone(), bar);
    }

    fn advance(&self, digest: &Digest, bytes: u64) {
        if let Some(b) = self.bars().get(digest) {
            b.inc(bytes);
        }
    }

    fn finish(&self, digest: &Digest, how: &'static str) {
        if let Some(b) = self.bars().remove(digest) {
            b.set_style(
                ProgressStyle::with_template("{prefix} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.finish_with_message(how);
        }
    }
}
