//! The dashboard in a real browser: headless Chromium loads `GET /`, lets the
//! page poll `/status`, and dumps the DOM, which must show the fake cluster's
//! members and its loss curve. Skips (with a line on stderr) when no Chromium
//! is on PATH.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Browser binaries tried, in order.
const BROWSERS: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// How long the browser may run before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// The first browser of [`BROWSERS`] found on PATH.
fn find_browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    BROWSERS.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Runs `browser` headless on `url` and returns the DOM it dumps (or why it could not).
fn dump_dom(browser: &PathBuf, url: &str) -> Result<String, String> {
    let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", browser.display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if started.elapsed() > BROWSER_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the browser ran past {BROWSER_TIMEOUT:?}; killed"));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let dom = out.join().unwrap_or_default();
    let log = err.join().unwrap_or_default();
    if !status.success() || dom.is_empty() {
        return Err(format!("the browser exited with {status}; stderr:\n{log}"));
    }
    Ok(dom)
}

/// The text from the element whose start tag carries `id="ID"` to the first `closing` after it.
fn element<'a>(dom: &'a str, id: &str, closing: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    let rest = &dom[start..];
    let end = rest
        .find(closing)
        .unwrap_or_else(|| panic!("#{id} is not closed by {closing}"));
    &rest[..end]
}

#[test]
fn dashboard_renders_members_and_loss_curve_in_chromium() {
    let Some(browser) = find_browser() else {
        eprintln!("skipped: no chromium on PATH (tried {BROWSERS:?})");
        return;
    };
    let (plane, cluster) = common::start();
    let url = format!("http://{}/", plane.local_addr());
    let dom = dump_dom(&browser, &url);
    plane.stop();
    let dom = dom.unwrap_or_else(|e| panic!("{e}"));

    let members = element(&dom, "members", "</tbody>");
    for member in &cluster.snapshot.members {
        assert!(
            members.contains(&format!(">{}<", member.name)),
            "{} not in #members:\n{members}",
            member.name
        );
    }

    let curve = element(&dom, "loss-curve", "</svg>");
    let polyline = &curve[curve.find("<polyline").expect("a polyline in #loss-curve")..];
    let points = polyline
        .split("points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the polyline has points");
    let pairs: Vec<(f64, f64)> = points
        .split_whitespace()
        .map(|pair| {
            let (x, y) = pair.split_once(',').expect("x,y");
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    assert_eq!(pairs.len(), cluster.snapshot.losses.len(), "{points}");
    // Scaled to the box: steps left to right, the falling loss from top to bottom.
    assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "{points}");
    let (first, last) = (pairs[0], pairs[pairs.len() - 1]);
    assert!(
        first.1 < last.1,
        "loss should fall (y grows downward): {points}"
    );
    for (x, y) in &pairs {
        assert!(
            (0.0..=640.0).contains(x) && (0.0..=280.0).contains(y),
            "{points}"
        );
    }

    let events = element(&dom, "events", "</ul>");
    assert!(
        events.contains("node-charlie stopped answering"),
        "{events}"
    );
    assert!(dom.contains("fake-run"));
}
