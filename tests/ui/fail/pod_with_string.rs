use chitchat_net::Message;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
#[repr(C)]
#[message(codec = "pod")]
struct Sample {
    name: String,
    value: u64,
}

fn main() {}
