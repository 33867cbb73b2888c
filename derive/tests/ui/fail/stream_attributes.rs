//! Mistakes with reply streams (`stream = Item`, `#[message(stream)]`):
//! each gives one error from the derive, at the attribute at fault.
//!
//! One module per mistake, each as a user would write it alone.

mod struct_with_reply_and_stream {
    use chitchat_net::Message;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize, Message)]
    #[message(codec = "bincode")]
    pub struct Change {
        pub value: u64,
    }

    #[derive(Serialize, Deserialize, Message)]
    #[message(codec = "bincode", reply = Change, stream = Change)]
    pub struct Watch {
        pub key: String,
    }
}

mod variant_stream_without_item {
    use chitchat_net::Message;

    #[derive(Debug, Message)]
    #[message(codec = "bincode")]
    pub enum Command {
        #[message(stream)]
        Watch { key: String },
    }
}

mod item_type_on_a_variant {
    use chitchat_net::Message;

    #[derive(Debug, Message)]
    #[message(codec = "bincode")]
    pub enum Change {
        Set { value: u64 },
    }

    #[derive(Debug, Message)]
    #[message(codec = "bincode")]
    pub enum Command {
        #[message(stream = Change)]
        Watch { key: String },
    }
}

mod deferred_and_stream {
    use chitchat_net::Message;

    #[derive(Debug, Message)]
    #[message(codec = "bincode")]
    pub enum Reply {
        Ok,
    }

    #[derive(Debug, Message)]
    #[message(codec = "bincode", reply = Reply, stream = Reply)]
    pub enum Command {
        #[message(deferred, stream)]
        Watch { key: String },
    }
}

fn main() {}
