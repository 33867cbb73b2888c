//! Struct messages, each handled by one method named after the type.
#![deny(warnings, missing_docs)]

use chitchat_net::{BoxError, Context, Handler, Message};
use serde::{Deserialize, Serialize};

/// Plain old data.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
#[repr(C)]
#[message(codec = "pod")]
pub struct Sample {
    id: u32,
    value: f32,
}

/// A tuple struct over bincode.
#[derive(Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
pub struct Celsius(pub f32);

/// A unit struct.
#[derive(Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
pub struct Tick;

/// Private types get a private handler trait.
#[derive(Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
struct Secret(u8);

#[derive(Handler)]
#[handler(message = Sample)]
struct Recorder;

impl SampleHandler for Recorder {
    async fn sample(&self, msg: Sample, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        ctx.send(&Celsius(msg.value))?;
        Ok(())
    }
}

#[derive(Handler)]
#[handler(message = Secret)]
struct Keeper;

impl SecretHandler for Keeper {
    async fn secret(&self, msg: Secret, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let _ = msg.0;
        Ok(())
    }
}

/// Handled through the trait of another module's message.
mod ticks {
    use super::{Tick, TickHandler};
    use chitchat_net::{BoxError, Context, Handler};

    /// Counts ticks.
    #[derive(Default, Handler)]
    #[handler(message = super::Tick)]
    pub struct Counter {
        count: std::sync::atomic::AtomicU64,
    }

    impl TickHandler for Counter {
        async fn tick(&self, _msg: Tick, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    }

    /// Kept to show the handler is usable where `Handler` is expected.
    pub fn check() {
        fn assert_handler<H: Handler>() {}
        assert_handler::<Counter>();
    }
}

/// What the test binary runs.
pub fn check() {
    fn assert_handler<H: Handler>() {}
    assert_handler::<Recorder>();
    assert_handler::<Keeper>();
    ticks::check();
}
