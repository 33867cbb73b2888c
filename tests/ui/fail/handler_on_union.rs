use chitchat_net::{Handler, Message};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
struct Reading {
    celsius: f32,
}

#[derive(Handler)]
#[handler(message = Reading)]
union Monitor {
    count: u32,
}

// Code using `Monitor` as a handler adds no error of its own.
fn assert_handler<H: Handler<Message = Reading>>() {}

fn main() {
    assert_handler::<Monitor>();
}
