use chitchat_net::Message;

#[derive(Clone, Copy, Message)]
#[message(codec = "pod")]
union Bits {
    int: u32,
    float: f32,
}

// Code using `Bits` as a message adds no error of its own.
fn assert_message<M: Message>() {}

fn main() {
    assert_message::<Bits>();
}
