use chitchat_net::Message;

#[derive(Message)]
#[message(codec = "bincode")]
enum Beat {
    #[message(tag = 1)]
    Ping { seq: u64 },
    #[message(tag = 1)]
    Pong { seq: u64 },
}

fn main() {}
