//! Mistakes in `#[derive(Message)]` and its attributes: each gives one error
//! from the derive, pointing at the mistake; code using the type adds no
//! error of its own.
//!
//! One module per mistake (independent of each other), each as a user
//! would write it alone.

mod builtin_codec_without_quotes {
    use chitchat_net::Message;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Message)]
    #[message(codec = bincode)]
    struct Reading {
        celsius: f32,
    }
}

mod duplicate_codec_attribute {
    use chitchat_net::Message;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Message)]
    #[message(codec = "bincode")]
    #[message(codec = "postcard")]
    struct Reading {
        celsius: f32,
    }
}

mod missing_codec {
    use chitchat_net::Message;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Message)]
    struct Reading {
        celsius: f32,
    }
}

mod unknown_codec {
    use chitchat_net::{BoxError, Context, Handler, Message};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Message)]
    #[message(codec = "json")]
    enum Beat {
        Ping { seq: u64 },
        Stop,
    }

    // Code using `Beat` and its handler trait adds no error of its own.
    #[derive(Handler)]
    #[handler(message = Beat)]
    struct Monitor;

    impl BeatHandler for Monitor {
        async fn ping(&self, _seq: u64, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
            Ok(())
        }

        async fn stop(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
            Ok(())
        }
    }

    fn assert_handler<H: Handler<Message = Beat>>() {}

    pub fn main() {
        assert_handler::<Monitor>();
    }
}

mod tag_on_struct {
    use chitchat_net::Message;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Message)]
    #[message(codec = "bincode", tag = 3)]
    struct Reading {
        celsius: f32,
    }
}

mod tag_with_own_codec {
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
}

mod duplicate_tag {
    use chitchat_net::Message;

    #[derive(Message)]
    #[message(codec = "bincode")]
    enum Beat {
        #[message(tag = 1)]
        Ping { seq: u64 },
        #[message(tag = 1)]
        Pong { seq: u64 },
    }
}

mod duplicate_tag_from_position {
    use chitchat_net::Message;

    #[derive(Message)]
    #[message(codec = "bincode")]
    enum Beat {
        #[message(tag = 1)]
        Ping {
            seq: u64,
        },
        Pong {
            seq: u64,
        },
    }
}

mod generic_message {
    use chitchat_net::Message;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Message)]
    #[message(codec = "bincode")]
    struct Reading<T> {
        value: T,
    }

    // Code using `Reading` as a message adds no error of its own.
    fn assert_message<M: Message>() {}

    pub fn main() {
        assert_message::<Reading<f32>>();
    }
}

mod message_on_union {
    use chitchat_net::Message;

    #[derive(Clone, Copy, Message)]
    #[message(codec = "pod")]
    union Bits {
        int: u32,
        float: f32,
    }

    // Code using `Bits` as a message adds no error of its own.
    fn assert_message<M: Message>() {}

    pub fn main() {
        assert_message::<Bits>();
    }
}

mod pod_on_enum {
    use chitchat_net::Message;

    #[derive(Clone, Copy, Message)]
    #[message(codec = "pod")]
    enum Beat {
        Ping { seq: u64 },
        Stop,
    }
}

fn main() {
    unknown_codec::main();
    generic_message::main();
    message_on_union::main();
}
