use chitchat_net::Message;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
#[repr(C)]
#[message(codec = "pod")]
struct Sample {
    flag: u8,
    value: u32,
}

fn main() {}
