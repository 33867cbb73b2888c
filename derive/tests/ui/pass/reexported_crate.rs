//! A crate that reaches chitchat-net through a re-export of its own.

mod net {
    pub use chitchat_net::*;
}

mod protocol {
    use crate::reexported_crate::net::{BoxError, Context};

    #[derive(crate::reexported_crate::net::Message)]
    #[message(
        codec = "bincode",
        crate = "crate::reexported_crate::net",
        handler = "Lights"
    )]
    pub enum Light {
        Red,
        Green { seconds: u16 },
    }

    #[derive(crate::reexported_crate::net::Handler)]
    #[handler(message = Light, crate = crate::reexported_crate::net)]
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

/// What the test binary runs.
pub fn check() {
    fn assert_handler<H: net::Handler<Message = protocol::Light>>() {}
    assert_handler::<protocol::Crossing>();
}
