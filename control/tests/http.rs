//! The control plane's endpoints over real HTTP, against a fake coordinator.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeCluster, TOKEN, get, raw_request, request, scale, start};
use shoal_control::{Cluster, ClusterStatus, ControlError, ControlPlane, MAX_BODY_BYTES, names};

#[test]
fn status_round_trips_as_json() {
    let (plane, cluster) = start();
    let response = get(plane.local_addr(), "/status");
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        response.headers
    );
    let status: ClusterStatus = serde_json::from_str(&response.body).unwrap();
    assert_eq!(status, cluster.snapshot);
    plane.stop();
}

#[test]
fn metrics_carry_the_snapshot_gauges_and_the_coordinators_metrics() {
    let (plane, _cluster) = start();
    metrics::counter!(names::STEPS_COMMITTED_TOTAL).increment(7);
    metrics::histogram!(names::STEP_SECONDS).record(0.25);
    metrics::counter!(names::BYTES_SENT_TOTAL).increment(1024);
    let response = get(plane.local_addr(), "/metrics");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let body = &response.body;
    for line in [
        "shoal_generation 3",
        "shoal_world_size 2",
        "shoal_committed_step 39",
        "shoal_tokens_per_second 12345.5",
        "shoal_members{state=\"active\"} 2",
        "shoal_members{state=\"draining\"} 1",
        "shoal_members{state=\"joining\"} 0",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "no line {line:?} in\n{body}"
        );
    }
    assert!(
        body.lines().any(|l| l.starts_with("shoal_loss 3.")),
        "no loss in\n{body}"
    );
    assert!(body.contains("# HELP shoal_generation"), "{body}");
    // Other tests in this binary may add to the counter; it is at least ours.
    let steps = body
        .lines()
        .find_map(|l| l.strip_prefix("shoal_steps_committed_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no committed steps counter in\n{body}"));
    assert!(steps >= 7.0);
    assert!(body.contains("shoal_step_seconds_count"), "{body}");
    // Names are exported as recorded: no unit suffix added.
    assert!(body.contains("\nshoal_bytes_sent_total "), "{body}");
    plane.stop();
}

#[test]
fn scale_without_a_token_is_401() {
    let (plane, cluster) = start();
    let response = scale(plane.local_addr(), None, r#"{"drain": "node-alpha"}"#);
    assert_eq!(response.status, 401);
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    assert!(response.json()["error"].is_string());
    assert!(cluster.drained.lock().unwrap().is_empty());
    plane.stop();
}

#[test]
fn scale_with_a_wrong_token_is_401() {
    let (plane, cluster) = start();
    let addr = plane.local_addr();
    for wrong in ["nope", "s3cret-cluster-toke", "s3cret-cluster-token!", ""] {
        let response = scale(addr, Some(wrong), r#"{"drain": "node-alpha"}"#);
        assert_eq!(response.status, 401, "token {wrong:?}");
        assert!(response.json()["error"].is_string());
    }
    let basic = request(
        addr,
        "POST",
        "/scale",
        &[("Authorization", &format!("Basic {TOKEN}"))],
        br#"{"drain": "node-alpha"}"#,
    );
    assert_eq!(basic.status, 401);
    assert!(cluster.drained.lock().unwrap().is_empty());
    plane.stop();
}

#[test]
fn scale_with_the_token_drains_the_node() {
    let (plane, cluster) = start();
    let response = scale(
        plane.local_addr(),
        Some(TOKEN),
        r#"{"drain": "node-bravo"}"#,
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json()["ok"],
        "node-bravo leaves at the next step boundary"
    );
    assert_eq!(*cluster.drained.lock().unwrap(), vec!["node-bravo"]);
    plane.stop();
}

#[test]
fn scale_of_an_unknown_node_is_404_and_a_refusal_409() {
    let (plane, cluster) = start();
    let addr = plane.local_addr();
    let unknown = scale(addr, Some(TOKEN), r#"{"drain": "node-zulu"}"#);
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.json()["error"],
        "no node `node-zulu` in the cluster"
    );
    let refused = scale(addr, Some(TOKEN), r#"{"drain": "node-charlie"}"#);
    assert_eq!(refused.status, 409);
    assert_eq!(refused.json()["error"], "node-charlie is already draining");
    assert!(cluster.drained.lock().unwrap().is_empty());
    plane.stop();
}

#[test]
fn scale_with_a_malformed_body_is_400() {
    let (plane, cluster) = start();
    let addr = plane.local_addr();
    for body in [
        "",
        "drain node-alpha",
        "{\"drain\": ",
        r#"{"drain": 7}"#,
        r#"{"join": "node-alpha"}"#,
        r#"{"drain": "node-alpha", "also": 1}"#,
        r#"{"drain": ""}"#,
        r#"["node-alpha"]"#,
    ] {
        let response = scale(addr, Some(TOKEN), body);
        assert_eq!(response.status, 400, "body {body:?}: {}", response.body);
        assert!(response.json()["error"].is_string());
    }
    assert!(cluster.drained.lock().unwrap().is_empty());
    plane.stop();
}

#[test]
fn scale_refuses_an_oversized_body() {
    let (plane, cluster) = start();
    let padding = " ".repeat(MAX_BODY_BYTES);
    let body = format!(r#"{{"drain": "node-alpha"{padding}}}"#);
    let response = scale(plane.local_addr(), Some(TOKEN), &body);
    assert_eq!(response.status, 413, "{}", response.body);
    assert!(cluster.drained.lock().unwrap().is_empty());
    // Just under the limit is fine.
    let padding = " ".repeat(MAX_BODY_BYTES - 30);
    let body = format!(r#"{{"drain": "node-alpha"{padding}}}"#);
    assert!(body.len() <= MAX_BODY_BYTES);
    let response = scale(plane.local_addr(), Some(TOKEN), &body);
    assert_eq!(response.status, 200, "{}", response.body);
    plane.stop();
}

#[test]
fn scale_refuses_an_oversized_body_of_unannounced_length() {
    let (plane, cluster) = start();
    let addr = plane.local_addr();
    // Chunked: no Content-Length to refuse up front, so the limit is met while reading.
    let mut raw = format!(
        "POST /scale HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let opening = r#"{"drain": "node-alpha""#.to_owned();
    let padding = " ".repeat(1000);
    for chunk in std::iter::once(&opening).chain(std::iter::repeat_n(&padding, 5)) {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("1\r\n}\r\n");
    raw.push_str("0\r\n\r\n");
    let response = raw_request(addr, raw.as_bytes());
    assert_eq!(response.status, 413, "{}", response.body);
    // A Content-Length far over the limit is refused before any body is read.
    let response = raw_request(
        addr,
        format!(
            "POST /scale HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Length: 1000000000\r\n\r\n{{}}"
        )
        .as_bytes(),
    );
    assert_eq!(response.status, 413, "{}", response.body);
    assert!(cluster.drained.lock().unwrap().is_empty());
    plane.stop();
}

#[test]
fn other_paths_and_methods_are_refused() {
    let (plane, _cluster) = start();
    let addr = plane.local_addr();
    let missing = get(addr, "/nope");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
    assert_eq!(get(addr, "/scale").status, 405);
    assert_eq!(request(addr, "POST", "/status", &[], b"").status, 405);
    plane.stop();
}

#[test]
fn dashboard_is_served_as_html() {
    let (plane, _cluster) = start();
    let response = get(plane.local_addr(), "/");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(response.body.contains("id=\"loss-curve\""));
    plane.stop();
}

#[test]
fn start_refuses_an_empty_token_and_a_taken_port() {
    let cluster: Arc<dyn Cluster> = Arc::new(FakeCluster::new());
    let any_port = "127.0.0.1:0".parse().unwrap();
    assert!(matches!(
        ControlPlane::start(any_port, String::new(), Arc::clone(&cluster)),
        Err(ControlError::EmptyToken)
    ));
    let taken = TcpListener::bind(any_port).unwrap();
    let addr = taken.local_addr().unwrap();
    assert!(matches!(
        ControlPlane::start(addr, TOKEN.into(), cluster),
        Err(ControlError::Bind { .. })
    ));
}

#[test]
fn stop_is_prompt_and_closes_the_port() {
    let (plane, _cluster) = start();
    let addr = plane.local_addr();
    assert_eq!(get(addr, "/status").status, 200);
    let started = Instant::now();
    plane.stop();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn stop_does_not_wait_for_idle_keep_alive_connections() {
    use std::io::{Read, Write};
    let (plane, _cluster) = start();
    let addr = plane.local_addr();
    // A browser keeps its connection open between polls.
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.write_all(format!("GET /status HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let started = Instant::now();
    plane.stop();
    let elapsed = started.elapsed();
    eprintln!("stop with an idle keep-alive connection took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn dropping_the_control_plane_stops_it() {
    let (plane, _cluster) = start();
    let addr = plane.local_addr();
    drop(plane);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still serving after drop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn prometheus_returns_one_recorder() {
    let first = shoal_control::prometheus().unwrap();
    let second = shoal_control::prometheus().unwrap();
    metrics::gauge!("shoal_test_only_gauge").set(42.0);
    assert!(first.render().contains("shoal_test_only_gauge 42"));
    assert!(second.render().contains("shoal_test_only_gauge 42"));
}
