use chitchat_net::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
struct Reading<T> {
    value: T,
}

// Code using `Reading` as a message adds no error of its own.
fn assert_message<M: Message>() {}

fn main() {
    assert_message::<Reading<f32>>();
}
