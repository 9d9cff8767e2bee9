//! A plugin that does what the input says, good or bad.

use serde::Deserialize;
use steward_sdk::{Context, Error, Value, http, json, kv, log, secrets};

#[derive(Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
enum Act {
    Loop,
    Hog { mib: usize },
    Panic,
    Http { url: String },
    Secret { name: String },
    Counter,
    Echo { value: Value },
    /// Reach for the environment, the file system and the network.
    Ambient,
    Fail { retryable: bool, message: String },
    /// Block in WASI (`thread::sleep` polls a monotonic-clock pollable).
    Sleep { ms: u64 },
    /// Log `lines` lines of `bytes` bytes each (empty lines by default).
    Flood {
        lines: usize,
        #[serde(default)]
        bytes: usize,
    },
    /// Fail with a message and a code of the given sizes.
    Huge { message_bytes: usize, code_bytes: usize },
}

fn handle(ctx: &Context, act: Act) -> Result<Value, Error> {
    match act {
        Act::Loop => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Act::Hog { mib } => {
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            for i in 0..mib {
                chunks.push(vec![i as u8; 1 << 20]);
            }
            Ok(json!({ "held_mib": chunks.len() }))
        }
        Act::Panic => panic!("deliberate panic"),
        Act::Http { url } => {
            let response = http::send(&http::Request {
                method: "GET".into(),
                url,
                headers: vec![],
                body: None,
                timeout_ms: Some(5_000),
            })?;
            Ok(json!({ "status": response.status, "body": String::from_utf8_lossy(&response.body) }))
        }
        Act::Secret { name } => Ok(json!({ "length": secrets::get(&name)?.len() })),
        Act::Counter => {
            let n: u64 = kv::get_json("count")?.unwrap_or(0) + 1;
            kv::set_json("count", &n)?;
            Ok(json!({ "count": n, "attempt": ctx.attempt }))
        }
        Act::Echo { value } => Ok(value),
        Act::Ambient => Ok(json!({
            "env": std::env::vars().count(),
            "args": std::env::args().count(),
            "read_root": std::fs::read_dir("/").is_ok(),
            "read_passwd": std::fs::read_to_string("/etc/passwd").is_ok(),
            "tcp": std::net::TcpStream::connect("127.0.0.1:22").is_ok(),
        })),
        Act::Sleep { ms } => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(json!({ "slept_ms": ms }))
        }
        Act::Flood { lines, bytes } => {
            let line = "x".repeat(bytes);
            for _ in 0..lines {
                log::info(&line);
            }
            Ok(json!({ "logged": lines }))
        }
        Act::Huge {
            message_bytes,
            code_bytes,
        } => Err(Error::fatal("m".repeat(message_bytes)).with_code("c".repeat(code_bytes))),
        Act::Fail { retryable, message } => {
            Err(if retryable { Error::retryable(message) } else { Error::fatal(message) })
        }
    }
}

steward_sdk::plugin!(handle);
