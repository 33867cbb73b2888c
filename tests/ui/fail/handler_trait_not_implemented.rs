use chitchat_net::{Handler, Message};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
enum Beat {
    Ping { seq: u64 },
    Stop,
}

#[derive(Handler)]
#[handler(message = Beat)]
struct Monitor;

fn main() {}
