//! The type checker's errors a derive leads to: a message type or field
//! without serde, a "pod" message without `bytemuck::Pod`, a handler without
//! its trait or with a method missing. Each error points at the user's code
//! and says what to add.
//!
//! One module per mistake (independent of each other), each as a user
//! would write it alone.

mod struct_not_serde {
    use chitchat_net::Message;

    #[derive(Message)]
    #[message(codec = "bincode")]
    struct Reading {
        celsius: f32,
    }
}

mod enum_field_not_serde {
    use chitchat_net::Message;

    struct Celsius(f32);

    #[derive(Message)]
    #[message(codec = "bincode")]
    enum Beat {
        Reading { celsius: Celsius },
        Stop,
    }
}

mod pod_without_pod_derive {
    use chitchat_net::Message;

    #[derive(Clone, Copy, Message)]
    #[repr(C)]
    #[message(codec = "pod")]
    struct Sample {
        id: u32,
        value: u32,
    }
}

mod handler_trait_not_implemented {
    use chitchat_net::{Handler, Message};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Message)]
    #[message(codec = "bincode")]
    enum Beat {
        Ping { seq: u64 },
        Stop,
    }

    #[derive(Handler)]
    #[handler(message = Beat)]
    struct Monitor;
}

mod missing_handler_method {
    use chitchat_net::{BoxError, Context, Handler, Message};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Message)]
    #[message(codec = "bincode")]
    enum Beat {
        Ping { seq: u64 },
        Pong { seq: u64 },
        Stop,
    }

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
}

fn main() {}
