//! Mistakes in `#[derive(Handler)]`: each gives one error from the derive;
//! code using the type as a handler adds no error of its own.
//!
//! One module per mistake (independent of each other), each as a user
//! would write it alone.

mod handler_without_message {
    use chitchat_net::Handler;

    #[derive(Handler)]
    struct Monitor;

    // Code using `Monitor` as a handler adds no error of its own.
    fn assert_handler<H: Handler>() {}

    pub fn main() {
        assert_handler::<Monitor>();
    }
}

mod handler_on_union {
    use chitchat_net::{Handler, Message};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Message)]
    #[message(codec = "bincode")]
    struct Reading {
        celsius: f32,
    }

    #[derive(Handler)]
    #[handler(message = Reading)]
    union Monitor {
        count: u32,
    }

    // Code using `Monitor` as a handler adds no error of its own.
    fn assert_handler<H: Handler<Message = Reading>>() {}

    pub fn main() {
        assert_handler::<Monitor>();
    }
}

fn main() {
    handler_without_message::main();
    handler_on_union::main();
}
