//! Create progress: per-layer bars with indicatif on a terminal, plain lines otherwise.

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
