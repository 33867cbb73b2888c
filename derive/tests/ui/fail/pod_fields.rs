//! "pod" messages whose fields are not plain bytes: bytemuck's derive refuses
//! them (the errors are bytemuck's, pointing at the field).
//!
//! One module per mistake (independent of each other), each as a user
//! would write it alone.

mod pod_with_reference {
    use chitchat_net::Message;

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
    #[repr(C)]
    #[message(codec = "pod")]
    struct Sample {
        name: &'static u64,
        value: u64,
    }
}

mod pod_with_string {
    use chitchat_net::Message;

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
    #[repr(C)]
    #[message(codec = "pod")]
    struct Sample {
        name: String,
        value: u64,
    }
}

mod pod_with_padding {
    use chitchat_net::Message;

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Message)]
    #[repr(C)]
    #[message(codec = "pod")]
    struct Sample {
        flag: u8,
        value: u32,
    }
}

fn main() {}
