//! Every kind of variant, with the user crate's strictest lints on: the
//! generated trait is documented and the generated code warns about nothing.
#![deny(warnings, missing_docs, unused_qualifications, rust_2018_idioms)]

use chitchat_net::{BoxError, Context, Handler, Message};
use serde::{Deserialize, Serialize};

/// Every kind of variant. (Serde is derived too, for the `Box<Self>` field.)
#[derive(Debug, Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
pub enum Everything {
    /// Named fields.
    Named {
        /// A number.
        seq: u64,
        /// A text.
        note: String,
    },
    /// Tuple fields.
    #[message(tag = 40)]
    Tuple(u8, Vec<u8>),
    /// No fields.
    Unit,
    /// No fields, with braces.
    EmptyNamed {},
    /// No fields, with parentheses.
    EmptyTuple(),
    /// A keyword as method name: `r#type`.
    Type {
        /// A raw identifier.
        r#type: u8,
    },
    /// A field called like the context parameter.
    Context {
        /// Not the context.
        ctx: u32,
    },
    /// A field of the enum's own type.
    Nested(Box<Self>),
    /// An acronym: `http_request`.
    HTTPRequest {
        /// A path.
        path: String,
    },
    /// Six fields: seven parameters with `self` and the context.
    Wide(u8, u8, u8, u8, u8, u8),
}

/// A handler implementing every method with `async fn`.
#[derive(Handler)]
#[handler(message = Everything)]
pub struct Server;

impl EverythingHandler for Server {
    async fn named(
        &self,
        _seq: u64,
        _note: String,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        Ok(())
    }
    async fn tuple(&self, _0: u8, _1: Vec<u8>, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
    async fn unit(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
    async fn empty_named(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
    async fn empty_tuple(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
    async fn r#type(&self, _type: u8, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
    async fn context(&self, ctx: u32, context: &mut Context<'_>) -> Result<(), BoxError> {
        let _ = (ctx, context.peer_addr());
        Ok(())
    }
    async fn nested(&self, _0: Box<Everything>, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
    async fn http_request(&self, _path: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
    #[allow(clippy::too_many_arguments)]
    async fn wide(
        &self,
        _0: u8,
        _1: u8,
        _2: u8,
        _3: u8,
        _4: u8,
        _5: u8,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        Ok(())
    }
}

/// No variants: every frame is an unknown tag.
#[derive(Message)]
#[message(codec = "bincode")]
pub enum Never {}

/// Nothing to do for a message that never arrives.
#[derive(Handler)]
#[handler(message = Never)]
pub struct Idle;

impl NeverHandler for Idle {}

/// What the test binary runs.
pub fn check() {
    fn assert_handler<H: Handler>() {}
    assert_handler::<Server>();
    assert_handler::<Idle>();
}
