use chitchat_net::Message;

#[derive(Clone, Copy, Message)]
#[message(codec = "pod")]
enum Beat {
    Ping { seq: u64 },
    Stop,
}

fn main() {}
