//! The tables and the summary of `shoal bench collectives`.

use super::ceilings::Ceilings;
use super::{Check, Op, Point, Transport};

/// A table whose columns are right-aligned (the first left-aligned) at fixed widths,
/// so rows can be printed as they are measured.
pub(super) struct Table {
    widths: Vec<usize>,
}

impl Table {
    /// Prints the header; each column is as wide as its header or the width given with it, whichever is more.
    fn start(columns: &[(&str, usize)]) -> Self {
        let widths: Vec<usize> = columns.iter().map(|(h, w)| h.len().max(*w)).collect();
        let table = Self { widths };
        let header: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
        table.row(&header);
        println!(
            "{}",
            "-".repeat(table.widths.iter().sum::<usize>() + table.widths.len() - 1)
        );
        table
    }

    fn row(&self, cells: &[String]) {
        let line: Vec<String> = cells
            .iter()
            .zip(&self.widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("{}", line.join(" ").trim_end());
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{:.0}%", x * 100.0))
}

fn times(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2}x"))
}

fn check_cell(c: &Check) -> String {
    match c {
        Check::Ok => "ok".into(),
        Check::Failed(_) => "FAILED".into(),
        Check::Skipped => "-".into(),
    }
}

/// Prints one row of a transport's table.
pub(super) fn print_row(table: &Table, t: Transport, p: &Point, c: &Ceilings) {
    let busbw = p.busbw();
    let gloo = c.gloo_busbw(p);
    let mut cells = vec![
        p.op.name().to_string(),
        p.world.to_string(),
        format!("{}", p.size_mib),
        p.iters.to_string(),
        format!("{:.2}", p.seconds * 1e3),
        format!("{:.3}", p.algbw()),
        format!("{busbw:.3}"),
        pct(Some(busbw / c.memcpy_gbps)),
    ];
    if t == Transport::Quic {
        cells.push(pct(c.stream_gbps.map(|s| busbw / s)));
    }
    cells.push(pct(p.combine));
    cells.push(pct(p.wait));
    if t == Transport::Quic {
        let other = p.combine.zip(p.wait).map(|(c, w)| (1.0 - c - w).max(0.0));
        cells.push(pct(other));
        cells.push(p.cpu_cores.map_or("-".into(), |x| format!("{x:.2}")));
    }
    if c.gloo.is_some() {
        cells.push(gloo.map_or("-".into(), |g| format!("{g:.3}")));
        cells.push(times(gloo.map(|g| busbw / g)));
    }
    cells.push(check_cell(&p.check));
    table.row(&cells);
    if let Check::Failed(why) = &p.check {
        println!("  check failed: {why}");
    }
}

pub(super) fn start_table(t: Transport, with_gloo: bool) -> Table {
    let mut cols = vec![
        ("op", 14),
        ("W", 2),
        ("MiB", 4),
        ("iters", 5),
        ("time ms", 9),
        ("algbw GB/s", 10),
        ("busbw GB/s", 10),
        ("%memcpy", 7),
    ];
    if t == Transport::Quic {
        cols.push(("%stream", 7));
    }
    cols.extend([("combine", 7), ("wait", 5)]);
    if t == Transport::Quic {
        cols.extend([("send+other", 5), ("CPU cores", 5)]);
    }
    if with_gloo {
        cols.extend([("gloo busbw", 10), ("x gloo", 6)]);
    }
    cols.push(("check", 5));
    Table::start(&cols)
}

pub(super) fn print_legend(transports: &[Transport], gloo: bool) {
    println!("\n%memcpy: busbw / single-thread memcpy.");
    println!(
        "combine / wait: share of the ranks' op time spent combining received data into \
         the buffer (reduction or copy) / waiting for frames; the rest is issuing sends \
         (for QUIC: copying each frame into the stream's queue) and bookkeeping."
    );
    if transports.contains(&Transport::Quic) {
        println!(
            "%stream: busbw (each link's rate in its one direction) / the single-stream \
             ceiling. CPU cores: CPU time of all ranks during the timed loop / its wall time \
             (- when the loop is too short for 10 ms ticks)."
        );
    }
    if gloo {
        println!("gloo busbw: the gloo peer run just now on the same sizes and worlds.");
    }
}

/// One summary line per op: `W=2 62% ok  W=4 40% below` for `ratio` against `target`.
fn summary_block(
    title: &str,
    points: &[&Point],
    ratio: impl Fn(&Point) -> Option<f64>,
    target: Option<f64>,
    percent: bool,
) {
    println!("  {title}");
    let mut ops: Vec<Op> = points.iter().map(|p| p.op).collect();
    ops.dedup();
    for op in ops {
        let cells: Vec<String> = points
            .iter()
            .filter(|p| p.op == op)
            .map(|p| {
                let r = ratio(p);
                let value = if percent { pct(r) } else { times(r) };
                let verdict = match (r, target) {
                    (Some(r), Some(t)) if r >= t => " ok",
                    (Some(_), Some(_)) => " below",
                    _ => "",
                };
                format!("W={} {value:>6}{verdict:<6}", p.world)
            })
            .collect();
        let line = format!("    {:<15}{}", op.name(), cells.join("  "));
        println!("{}", line.trim_end());
    }
}

/// The ratios the targets are stated in, at the largest size measured.
pub(super) fn summary(points: &[(Transport, Point)], c: &Ceilings) {
    let Some(largest) = points.iter().map(|(_, p)| p.bytes).max() else {
        return;
    };
    let of = |t: Transport| -> Vec<&Point> {
        let mut v: Vec<&Point> = points
            .iter()
            .filter(|(pt, p)| *pt == t && p.bytes >= largest * 9 / 10)
            .map(|(_, p)| p)
            .collect();
        v.sort_by_key(|p| (p.op as u8, p.world));
        v
    };
    let size = points
        .iter()
        .find(|(_, p)| p.bytes >= largest * 9 / 10)
        .map_or(0.0, |(_, p)| p.size_mib);
    println!("\nsummary at {size} MiB (targets from the issue)");
    let gloo = |p: &Point| c.gloo_busbw(p).map(|g| p.busbw() / g);
    let local = of(Transport::Local);
    if !local.is_empty() {
        let memcpy = |p: &Point| Some(p.busbw() / c.memcpy_gbps);
        let target = Some(0.5);
        summary_block(
            "in-process busbw / 1-thread memcpy (target >= 50%)",
            &local,
            memcpy,
            target,
            true,
        );
        let all = |p: &Point| Some(p.world as f64 * p.busbw() / c.memcpy_all_gbps);
        let title = "in-process, all links together: W x busbw / memcpy on all cpus at once";
        summary_block(title, &local, all, None, true);
        if c.gloo.is_some() {
            let title = "in-process busbw / gloo (target >= 2x)";
            summary_block(title, &local, gloo, Some(2.0), false);
        }
    }
    let quic = of(Transport::Quic);
    if !quic.is_empty() {
        let stream = |p: &Point| c.stream_gbps.map(|s| p.busbw() / s);
        let title = "QUIC busbw per direction / one raw stream (target >= 70%)";
        summary_block(title, &quic, stream, Some(0.7), true);
        let all = |p: &Point| c.stream_gbps.map(|s| p.world as f64 * p.busbw() / s);
        let title = "QUIC, all links together: W x busbw / one raw stream";
        summary_block(title, &quic, all, None, true);
        if c.gloo.is_some() {
            summary_block("QUIC busbw / gloo", &quic, gloo, None, false);
        }
    }
}
