//! An echo server: every frame received is sent back, followed by the
//! delimiter. Frames over the limit are never echoed; that peer is
//! disconnected and the others are served as before.
//!
//! ```text
//! cargo run --release --example echo -- --listen 127.0.0.1:7000 \
//!     [--delimiter BYTE] [--max-frame BYTES] [--idle-timeout-ms MS]
//! ```
//!
//! `--delimiter` takes a decimal byte (`59`), a character (`;`) or hex
//! (`0x3b`); the default is `\n`. `--max-frame` defaults to 65536. There is no
//! idle timeout unless one is given. Events are logged through `tracing`
//! (set `RUST_LOG=debug` for more).

use std::time::Duration;

use bytes::Bytes;
use chitchat_net::{handler_fn, BoxError, Context, Framing, Server};

struct Args {
    listen: String,
    delimiter: u8,
    max_frame: usize,
    idle_timeout: Option<Duration>,
}

fn usage() -> ! {
    eprintln!(
        "usage: echo --listen ADDR [--delimiter BYTE] [--max-frame BYTES] [--idle-timeout-ms MS]"
    );
    std::process::exit(2)
}

/// `59`, `;` or `0x3b`.
fn parse_byte(text: &str) -> Option<u8> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u8::from_str_radix(hex, 16).ok();
    }
    if let Ok(n) = text.parse::<u8>() {
        return Some(n);
    }
    match text {
        "\\n" => Some(b'\n'),
        "\\r" => Some(b'\r'),
        "\\t" => Some(b'\t'),
        "\\0" => Some(0),
        _ if text.len() == 1 => Some(text.as_bytes()[0]),
        _ => None,
    }
}

fn parse_args() -> Args {
    let mut args = Args {
        listen: String::new(),
        delimiter: b'\n',
        max_frame: 65536,
        idle_timeout: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--listen" => args.listen = value,
            "--delimiter" => args.delimiter = parse_byte(&value).unwrap_or_else(|| usage()),
            "--max-frame" => args.max_frame = value.parse().unwrap_or_else(|_| usage()),
            "--idle-timeout-ms" => {
                let ms = value.parse().unwrap_or_else(|_| usage());
                args.idle_timeout = Some(Duration::from_millis(ms));
            }
            _ => usage(),
        }
    }
    if args.listen.is_empty() {
        usage();
    }
    args
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = parse_args();

    // Raw bytes in raw framing: what comes in goes back byte for byte.
    let echo = handler_fn(
        |frame: Bytes, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.send(&frame)?;
            Ok(())
        },
    );
    let framing = Framing::delimited(args.delimiter)
        .raw()
        .max_frame_length(args.max_frame);
    let mut builder = Server::builder(echo).framing(framing);
    if let Some(timeout) = args.idle_timeout {
        builder = builder.idle_timeout(timeout);
    }
    let server = builder.listen(&args.listen).await?;
    println!("listening on {}", server.local_addr());

    let errors = server.errors();
    loop {
        tokio::select! {
            event = errors.recv() => match event {
                Some(event) => tracing::warn!("{event}"),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    server.cut().await;
    Ok(())
}
