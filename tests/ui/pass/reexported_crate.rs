//! A crate that reaches chitchat-net through a re-export of its own.

mod net {
    pub use chitchat_net::*;
}

mod protocol {
    use crate::net::{BoxError, Context};

    #[derive(crate::net::Message)]
    #[message(codec = "bincode", crate = "crate::net", handler = "Lights")]
    pub enum Light {
        Red,
        Green { seconds: u16 },
    }

    #[derive(crate::net::Handler)]
    #[handler(message = Light, crate = crate::net)]
    pub struct Crossing;

    impl Lights for Crossing {
        async fn red(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
            Ok(())
        }

        async fn green(&self, _seconds: u16, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
            Ok(())
        }
    }
}

fn main() {
    fn assert_handler<H: net::Handler<Message = protocol::Light>>() {}
    assert_handler::<protocol::Crossing>();
}
