use chitchat_net::{BoxError, Context, Handler, Message};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(codec = "json")]
enum Beat {
    Ping { seq: u64 },
    Stop,
}

// Code using `Beat` and its handler trait adds no error of its own.
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

fn assert_handler<H: Handler<Message = Beat>>() {}

fn main() {
    assert_handler::<Monitor>();
}
