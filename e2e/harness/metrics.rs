//! berthd's Prometheus endpoint as tests read it: one scrape over plain HTTP, samples by series.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// One scrape: the samples by series (`name{labels}` as exposed), plus the raw text for messages.
pub struct Scrape {
    pub text: String,
    pub samples: HashMap<String, f64>,
}

impl Scrape {
    /// The value of `series` (e.g. `berth_pods_running` or `x_count{method="Version"}`); panics with
    /// the whole scrape if it is not exposed.
    pub fn get(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("{series} is not exposed:\n{}", self.text))
    }

    /// Asserts that `series` is exposed with a value of at least `min`.
    pub fn at_least(&self, series: &str, min: f64) {
        let v = self.get(series);
        assert!(v >= min, "{series} is {v}, expected at least {min}:\n{}", self.text);
    }

    /// The value of the first series (in exposition order) that starts with `prefix`, if any.
    pub fn first_with_prefix(&self, prefix: &str) -> Option<f64> {
        let line = self.text.lines().find(|l| l.starts_with(prefix))?;
        let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
        self.samples.get(series).copied()
    }
}

/// GET /metrics over a plain TCP connection, retried while the endpoint is not up yet.
pub fn scrape(port: u16) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("connecting to the metrics endpoint on 127.0.0.1:{port}: {e}"),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("sending the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reading the response");
    let (head, body) =
        response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP header end: {response}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain"), "{head}");
    // axum answers `Connection: close` requests without chunking; decode chunks if it ever does.
    let text = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l:?}"));
            let value: f64 = value.parse().unwrap_or_else(|e| panic!("bad value in {l:?}: {e}"));
            (series.to_string(), value)
        })
        .collect();
    Scrape { text, samples }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or_else(|e| panic!("chunk size {size:?}: {e}"));
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
