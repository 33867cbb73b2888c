use chitchat_net::{BoxError, Context, Handler, Message};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
enum Beat {
    Ping { seq: u64 },
    Pong { seq: u64 },
    Stop,
}

#[derive(Handler)]
#[handler(message = Beat)]
struct Monitor;

impl BeatHandler for Monitor {
    async fn ping(&self, _seq: u64, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn stop(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
}

fn main() {}
