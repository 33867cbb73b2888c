use chitchat_net::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(codec = chitchat_net::Bincode)]
enum Beat {
    #[message(tag = 4)]
    Ping {
        seq: u64,
    },
    Stop,
}

fn main() {}
