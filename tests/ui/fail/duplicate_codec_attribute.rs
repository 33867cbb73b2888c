use chitchat_net::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
#[message(codec = "postcard")]
struct Reading {
    celsius: f32,
}

fn main() {}
