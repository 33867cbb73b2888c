//! Derived typed handlers: a `Pod` struct written with no serialisation
//! step, and an enum of bincode messages with one handler method per kind.
//!
//! ```text
//! cargo run --example typed
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use chitchat_net::{handler_fn, BoxError, Client, Context, Handler, Message, Server};
use serde::{Deserialize, Serialize};

/// A sensor sample: 8 bytes on the wire, as they are in memory.
#[derive(Debug, Clone, Copy, Pod, Zeroable, Message)]
#[repr(C)]
#[message(codec = "pod")]
struct Sample {
    sensor: u32,
    value: u32,
}

/// Commands for a device; tags pinned so that peers of other versions agree.
#[derive(Debug, Message)]
#[message(codec = "bincode")]
enum Command {
    #[message(tag = 1)]
    SetRate { per_second: u32 },
    #[message(tag = 2)]
    Pause,
    #[message(tag = 3)]
    Rename(String),
}

/// What the device answers to every command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
struct Status {
    name: String,
    per_second: u32,
    paused: bool,
}

/// Sums the samples it receives (`SampleHandler` comes from the derive).
#[derive(Debug, Default, Handler)]
#[handler(message = Sample)]
struct Aggregator {
    samples: AtomicU64,
    total: AtomicU64,
}

impl SampleHandler for Aggregator {
    async fn sample(&self, s: Sample, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.samples.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(u64::from(s.value), Ordering::Relaxed);
        Ok(())
    }
}

/// A device: one small method per command (`CommandHandler`).
#[derive(Debug, Handler)]
#[handler(message = Command)]
struct Device {
    name: Mutex<String>,
    per_second: AtomicU32,
    paused: AtomicBool,
}

impl Device {
    fn status(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let name = self.name.lock().map_err(|_| "poisoned")?.clone();
        ctx.send(&Status {
            name,
            per_second: self.per_second.load(Ordering::Relaxed),
            paused: self.paused.load(Ordering::Relaxed),
        })?;
        Ok(())
    }
}

impl CommandHandler for Device {
    async fn set_rate(&self, per_second: u32, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.per_second.store(per_second, Ordering::Relaxed);
        self.paused.store(false, Ordering::Relaxed);
        self.status(ctx)
    }

    async fn pause(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.paused.store(true, Ordering::Relaxed);
        self.status(ctx)
    }

    async fn rename(&self, name: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        *self.name.lock().map_err(|_| "poisoned")? = name;
        self.status(ctx)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Pod samples, from a write-only client.
    let aggregator = Server::listen("127.0.0.1:0", Aggregator::default()).await?;
    let sensor = Client::<Sample>::connect(aggregator.local_addr()).await?;
    for i in 0..1000u32 {
        // Values like 10 (b'\n') travel escaped: they cannot split a frame.
        sensor
            .send(&Sample {
                sensor: 7,
                value: i % 20,
            })
            .await?;
    }
    sensor.close().await; // returns once the server has read everything
    let stats = aggregator.handler();
    println!(
        "pod: sent 1000 samples of {} bytes; the server summed {} of them to {}",
        std::mem::size_of::<Sample>(),
        stats.samples.load(Ordering::Relaxed),
        stats.total.load(Ordering::Relaxed),
    );
    assert_eq!(stats.samples.load(Ordering::Relaxed), 1000);
    aggregator.cut().await;

    // Bincode commands, each answered with a status.
    let device = Device {
        name: Mutex::new("pump".into()),
        per_second: AtomicU32::new(1),
        paused: AtomicBool::new(false),
    };
    let server = Server::listen("127.0.0.1:0", device).await?;
    let (tx, mut statuses) = tokio::sync::mpsc::unbounded_channel();
    let print = handler_fn(
        move |s: Status, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(s)?;
            Ok(())
        },
    );
    let client = Client::<Command>::builder()
        .handler(print)
        .connect(server.local_addr())
        .await?;
    let commands = [
        Command::SetRate { per_second: 50 },
        Command::Rename("pump-2".into()),
        Command::Pause,
    ];
    for command in commands {
        println!("bincode: sent {command:?}");
        client.send(&command).await?;
        let status = tokio::time::timeout(Duration::from_secs(5), statuses.recv())
            .await?
            .ok_or("connection closed")?;
        println!("         got  {status:?}");
    }
    client.close().await;
    server.cut().await;
    Ok(())
}
