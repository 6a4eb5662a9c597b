//! Terminal output of a training run: an indicatif bar (step, loss, tokens/s, LR) and one
//! table row per evaluation: each domain's validation loss, under a header with its floor,
//! and for a continual run with old data the mean of the new (downstream) and of the old
//! (upstream) domains side by side.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use shoal_actors::{EvalStats, StepStats, TrainObserver};

/// Drives a progress bar from the trainer's callbacks.
pub struct ProgressObserver {
    bar: ProgressBar,
    /// Smoothed training loss (EMA), steadier to read than the per-step value.
    loss: Option<f64>,
    /// Smoothed throughput.
    tokens_per_s: Option<f64>,
    /// Whether the evaluation table's header is out.
    header_printed: bool,
}

impl ProgressObserver {
    /// A bar on stderr (hidden automatically when stderr is not a terminal).
    pub fn new() -> Self {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        Self {
            bar,
            loss: None,
            tokens_per_s: None,
            header_printed: false,
        }
    }

    /// Prints a line above the bar (or plainly when the bar is hidden).
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| println!("{line}"));
    }

    /// Removes the bar, leaving the printed lines.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn ema(prev: Option<f64>, x: f64, alpha: f64) -> f64 {
    prev.map_or(x, |p| p + alpha * (x - p))
}

/// Width of a domain's column in the evaluation table.
fn column_width(name: &str) -> usize {
    name.len().max(8)
}

/// Headers of the mean columns of a run with old (upstream) data.
const MEAN_COLUMNS: [&str; 2] = ["downstream", "upstream"];

/// The header of the evaluation table: domain names, then each domain's floor.
pub fn format_eval_header(e: &EvalStats) -> String {
    let mut names = format!("{:>6}", "step");
    let mut floors = format!("{:>6}", "floor");
    for d in &e.domains {
        let w = column_width(&d.name);
        names += &format!("  {:>w$}", d.name);
        floors += &match d.floor {
            Some(f) => format!("  {f:>w$.3}"),
            None => format!("  {:>w$}", "-"),
        };
    }
    if e.has_upstream() {
        names += " |";
        floors += "  ";
        for column in MEAN_COLUMNS {
            let w = column.len();
            names += &format!("  {column:>w$}");
            floors += &format!("  {:>w$}", "mean");
        }
        return format!("{names}   (validation loss, nats/token)\n{floors}");
    }
    if e.domains.iter().any(|d| d.floor.is_some()) {
        format!("{names}   (validation loss, nats/token)\n{floors}")
    } else {
        format!("{names}   (validation loss, nats/token)")
    }
}

/// One row of the evaluation table: the step and each domain's validation loss.
pub fn format_eval(e: &EvalStats) -> String {
    let mut line = format!("{:>6}", e.step);
    for d in &e.domains {
        let w = column_width(&d.name);
        line += &format!("  {:>w$.3}", d.loss);
    }
    if e.has_upstream() {
        line += "  ";
        for (column, mean) in MEAN_COLUMNS
            .iter()
            .zip([e.downstream_mean(), e.upstream_mean()])
        {
            let w = column.len();
            line += &format!("  {:>w$.3}", mean.unwrap_or(f64::NAN));
        }
    }
    line
}

/// The last evaluation as one line per domain: loss, floor, and the gap between them.
pub fn format_final(e: &EvalStats) -> String {
    e.domains
        .iter()
        .map(|d| match d.floor {
            _ if d.upstream => format!("  {:<12} val {:.3}  (old data)", d.name, d.loss),
            Some(f) => format!(
                "  {:<12} val {:.3}  floor {:.3}  gap {:+.3}",
                d.name,
                d.loss,
                f,
                f64::from(d.loss) - f
            ),
            None => format!("  {:<12} val {:.3}", d.name, d.loss),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl TrainObserver for ProgressObserver {
    fn on_start(&mut self, start_step: u64, max_steps: u64) {
        self.bar.set_length(max_steps);
        self.bar.set_position(start_step);
        self.bar.reset_eta();
    }

    fn on_step(&mut self, s: &StepStats) {
        self.loss = Some(ema(self.loss, f64::from(s.loss), 0.3));
        self.tokens_per_s = Some(ema(self.tokens_per_s, s.tokens_per_s(), 0.2));
        self.bar.set_position(s.step);
        self.bar.set_message(format!(
            "loss {:.3} | {:.0} tok/s | lr {:.2e}",
            self.loss.unwrap_or(f64::NAN),
            self.tokens_per_s.unwrap_or(0.0),
            s.lr
        ));
        tracing::debug!(
            step = s.step,
            loss = s.loss,
            grad_norm = s.grad_norm,
            lr = s.lr,
            "step"
        );
    }

    fn on_eval(&mut self, e: &EvalStats) {
        if !self.header_printed {
            self.println(&format_eval_header(e));
            self.header_printed = true;
        }
        self.println(&format_eval(e));
    }

    fn on_checkpoint(&mut self, step: u64, dir: &Path) {
        tracing::info!(step, dir = %dir.display(), "checkpoint saved");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_actors::DomainEval;

    fn domain(name: &str, loss: f32, upstream: bool) -> DomainEval {
        DomainEval {
            name: name.into(),
            loss,
            floor: None,
            upstream,
        }
    }

    #[test]
    fn the_table_shows_downstream_and_upstream_means_side_by_side() {
        let e = EvalStats {
            step: 40,
            domains: vec![
                domain("zh_tang", 3.0, false),
                domain("zh_songci", 4.0, false),
                domain("en_drama", 1.5, true),
            ],
        };
        let header = format_eval_header(&e);
        assert!(
            header.contains("downstream") && header.contains("upstream"),
            "{header}"
        );
        let row = format_eval(&e);
        assert!(row.ends_with("3.500     1.500"), "{row}");
        // Each value sits under its column.
        let first = header.lines().next().unwrap();
        assert_eq!(
            first.find("downstream").unwrap() + 10,
            row.find("3.500").unwrap() + 5
        );
        assert!(format_final(&e).contains("en_drama     val 1.500  (old data)"));
        // Without old data, no mean columns.
        let plain = EvalStats {
            step: 1,
            domains: vec![domain("a", 1.0, false)],
        };
        assert!(!format_eval_header(&plain).contains("upstream"));
        assert_eq!(format_eval(&plain), "     1     1.000");
    }
}
