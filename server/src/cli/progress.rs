//! Create progress: per-layer bars with indicatif on a terminal, plain lines otherwise; copy
//! progress (`berth cp`): a bar on stderr when it is a terminal and the copy is large.

use std::collections::HashMap;
use std::io::IsTerminal as _;

use berth_api::v1::create_workspace_response::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Renders the events of one create.
pub struct CreateProgress {
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
    last_percent: Option<u64>,
}

impl CreateProgress {
    /// Bars when stdout is a terminal, lines otherwise.
    pub fn new() -> Self {
        let bars = std::io::stdout().is_terminal().then(|| (MultiProgress::new(), HashMap::new()));
        Self { bars, last_percent: None }
    }

    /// Shows one event.
    pub fn show(&mut self, event: Event) {
        match event {
            Event::Pulling(pulling) => self.line(&format!(
                "pulling {} ({} layers, {} bytes)",
                pulling.image, pulling.total_layers, pulling.total_bytes
            )),
            Event::PullProgress(progress) => self.pull_progress(&progress),
            Event::Unpacking(unpacking) => {
                self.line(&format!("unpacking {}/{} layers", unpacking.layers_done, unpacking.total_layers));
            }
            Event::Creating(_) => self.line("creating container"),
            Event::Restoring(restoring) => {
                self.line(&format!("restoring /data {}/{} bytes", restoring.bytes_done, restoring.total_bytes));
            }
            Event::Ready(ready) => {
                self.finish();
                let workspace = ready.workspace.unwrap_or_default();
                println!(
                    "ready {} {} pid {}",
                    workspace.workspace_id,
                    workspace.state().as_str_name().trim_start_matches("WORKSPACE_STATE_"),
                    workspace.init_pid
                );
            }
        }
    }

    fn pull_progress(&mut self, progress: &berth_api::v1::create_workspace_response::PullProgress) {
        let Some((multi, bars)) = &mut self.bars else {
            // Plain output: one line per 10% so logs stay short.
            let percent = (progress.offset_bytes * 100).checked_div(progress.total_bytes).unwrap_or(100);
            if self.last_percent.is_none_or(|last| percent >= last + 10 || percent == 100 && last != 100) {
                println!("pull {percent}% {}/{} bytes", progress.offset_bytes, progress.total_bytes);
                self.last_percent = Some(percent);
            }
            return;
        };
        for layer in &progress.layers {
            let bar = bars.entry(layer.digest.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(layer.total));
                bar.set_style(
                    ProgressStyle::with_template("{msg:20} [{bar:40}] {bytes}/{total_bytes}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_message(layer.digest.trim_start_matches("sha256:").chars().take(12).collect::<String>());
                bar
            });
            bar.set_position(layer.offset);
        }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => println!("{text}"),
        }
    }

    fn finish(&mut self) {
        if let Some((_, bars)) = &self.bars {
            for bar in bars.values() {
                bar.finish();
            }
        }
    }

    /// Leaves the bars where they stopped (the create failed).
    pub fn abandon(&mut self) {
        if let Some((_, bars)) = &self.bars {
            for bar in bars.values() {
                bar.abandon();
            }
        }
    }
}

/// Copies smaller than this finish too fast for a bar to tell anything.
const LARGE_TRANSFER_BYTES: u64 = 8 << 20;

/// The progress of one `berth cp`, on stderr (stdout may carry the copied bytes): nothing until
/// the copy is large, then a bar of bytes for one file of known size, or a running count of
/// bytes and files for a tree. Nothing at all when stderr is not a terminal.
pub struct TransferProgress {
    terminal: bool,
    /// The size of a single file; `None` for a tree, whose size is not known in advance.
    total: Option<u64>,
    bytes: u64,
    files: u64,
    current: String,
    bar: Option<ProgressBar>,
}

impl TransferProgress {
    /// One file of `size` bytes.
    pub fn file(size: u64) -> Self {
        Self::new(Some(size))
    }

    /// A directory tree.
    pub fn tree() -> Self {
        Self::new(None)
    }

    fn new(total: Option<u64>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        Self { terminal, total, bytes: 0, files: 0, current: String::new(), bar: None }
    }

    /// A file starts: its name shows next to the counts.
    pub fn start_file(&mut self, name: &str) {
        self.files += 1;
        self.current = name.to_owned();
        if let Some(bar) = &self.bar {
            bar.set_message(self.message());
        }
    }

    /// `bytes` more were copied.
    pub fn advance(&mut self, bytes: u64) {
        self.bytes += bytes;
        if self.bar.is_none() && self.terminal && self.total.unwrap_or(self.bytes) >= LARGE_TRANSFER_BYTES {
            self.bar = Some(self.make_bar());
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.bytes);
        }
    }

    fn make_bar(&self) -> ProgressBar {
        let (bar, template) = match self.total {
            Some(total) => (
                ProgressBar::new(total),
                "{msg:20!} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ),
            None => (ProgressBar::new_spinner(), "{spinner} {bytes} {binary_bytes_per_sec} {wide_msg}"),
        };
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_position(self.bytes);
        bar.set_message(self.message());
        bar
    }

    fn message(&self) -> String {
        match self.total {
            Some(_) => self.current.clone(),
            None => format!("{} files, {}", self.files, self.current),
        }
    }

    /// A line on stderr (a skipped entry) that does not garble the bar.
    pub fn warn(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// The copy is complete: the bar stays at its final count.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(self.message());
            bar.finish();
        }
    }

    /// The copy failed: the bar stays where it stopped, and the error follows it.
    pub fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}
