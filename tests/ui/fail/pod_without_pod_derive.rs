use chitchat_net::Message;

#[derive(Clone, Copy, Message)]
#[repr(C)]
#[message(codec = "pod")]
struct Sample {
    id: u32,
    value: u32,
}

fn main() {}
