//! Requests answered by a stream of items ([`Subscription`]).

use crate::codec::Message;

/// A message sent as a subscription: a request answered by a stream of
/// items of type [`Item`](Self::Item) (a reply stream), not by one reply.
///
/// [`Client::subscribe`](crate::Client::subscribe) and
/// [`ConnectionHandle::subscribe`](crate::ConnectionHandle::subscribe)
/// return a stream of `Self::Item`: the caller does not choose the item
/// type. Derive it with `#[message(stream = YourItem)]` beside
/// `#[derive(Message)]`; the derived handler's methods for it then get a
/// [`ReplySink<YourItem>`](crate::ReplySink) to send the items with (see
/// [`derive@crate::Message`]). An enum may be both a [`Request`](crate::Request)
/// (`reply = R`) and a subscription: then the variants marked
/// `#[message(stream)]` are answered by streams, the others by replies.
///
/// # Examples
///
/// ```
/// use chitchat_net::{Message, Subscription};
///
/// #[derive(Debug, Message, serde::Serialize, serde::Deserialize)]
/// #[message(codec = "bincode", stream = Change)]
/// struct Watch { key: String }
///
/// #[derive(Debug, Message, serde::Serialize, serde::Deserialize)]
/// #[message(codec = "bincode")]
/// struct Change { key: String, value: Option<String> }
///
/// fn item_of<Q: Subscription>() -> &'static str { std::any::type_name::<Q::Item>() }
/// assert!(item_of::<Watch>().ends_with("Change"));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not name a stream item type: it is not a `Subscription`",
    label = "`subscribe` needs a message that declares its stream's items",
    note = "declare the items with `#[message(stream = YourItem)]` on `{Self}` (or `impl Subscription for {Self}`)"
)]
pub trait Subscription: Message {
    /// The items of the stream that answers it.
    type Item: Message;
}
