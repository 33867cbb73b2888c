use chitchat_net::Message;

#[derive(Message)]
#[message(codec = "bincode")]
struct Reading {
    celsius: f32,
}

fn main() {}
