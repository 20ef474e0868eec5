//! Helpers shared by the integration tests: a raw HTTP/1.1 client (so that tests can send anything,
//! including bytes no HTTP library would produce) and request builders.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `bytes` on a fresh connection and returns everything the server sent back until it closed
/// the connection (requests carry `Connection: close`, or are refused, which also closes). Reading runs
/// concurrently with writing so that an early answer to a large body is not lost.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    send_raw_with(addr, bytes, false)
}

/// Like [`send_raw`]; with `half_close` the write side is shut after sending, so that bytes the server
/// cannot frame as a request end in EOF instead of a wait (the server then closes, maybe silently).
pub fn send_raw_with(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect to the test server");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            // A complete response is enough: a server keeping the connection alive would otherwise
            // make us wait for the read timeout.
            if response_complete(&out) {
                break;
            }
        }
        out
    });
    // The server may answer and close before reading everything (401, 413): a failed write is fine.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    reader.join().unwrap()
}

/// Whether `resp` holds a full response head and the `Content-Length` bytes of body it announces.
fn response_complete(resp: &[u8]) -> bool {
    let Some(p) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&resp[..p]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    matches!(len, Some(n) if resp.len() >= p + 4 + n)
}

/// Status code of the first response in `resp`.
pub fn status_of(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut it = line.split_whitespace();
    if !it.next()?.starts_with("HTTP/1.") {
        return None;
    }
    it.next()?.parse().ok()
}

/// Body of the first response (after the blank line).
pub fn body_of(resp: &[u8]) -> &[u8] {
    match resp.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &resp[p + 4..],
        None => &[],
    }
}

/// A request with `Content-Length`, `Connection: close` and the given extra header lines.
pub fn request(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut v = r.into_bytes();
    v.extend_from_slice(body);
    v
}

/// `{"inputs": [[...], ...]}` from rows, written with Rust's shortest round-trip formatting.
pub fn inputs_json(rows: &[Vec<f64>]) -> String {
    let rows: Vec<String> = rows
        .iter()
        .map(|r| {
            let v: Vec<String> = r.iter().map(|x| format!("{x:?}")).collect();
            format!("[{}]", v.join(","))
        })
        .collect();
    format!("{{\"inputs\":[{}]}}", rows.join(","))
}
