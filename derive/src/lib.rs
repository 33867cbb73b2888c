//! Derive macros for `chitchat-net`: `Message` and `Handler`.
//!
//! Use them through the main crate (`chitchat_net::{Message, Handler}`,
//! feature `derive`, on by default), which they generate code for.
//!
//! The steps run in the order of the files: `ast` (a typed view of the
//! input), `attr` (our helper attributes), `valid` (every semantic check),
//! `expand` (code generation, and a stub impl on invalid input so that one
//! mistake gives one error).
#![forbid(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Makes a struct or an enum a `Message`, and generates the handler trait
/// that serves it one method per kind of message.
///
/// # Codecs
///
/// `#[message(codec = ...)]` is required and picks the message's codec:
///
/// | attribute | on a struct | on an enum |
/// |---|---|---|
/// | `codec = "bincode"` | `Bincode` | `codec::Tagged<Bincode>` |
/// | `codec = "postcard"` | `Postcard` (feature `postcard`) | `codec::Tagged<Postcard>` |
/// | `codec = "pod"` | `PodCodec` | refused |
/// | `codec = path::To::Codec` | that type | that type |
///
/// - `"bincode"` and `"postcard"` structs must implement `Serialize` and
///   `Deserialize` (derive them with serde).
/// - `"pod"` structs must implement `bytemuck::Pod` (derive it with
///   bytemuck, with `#[repr(C)]`): a type with padding, a pointer or a
///   `String` is refused at compile time, by bytemuck's derive or at the
///   `codec = "pod"` of ours.
/// - A path, without quotes, names your own codec type, which implements
///   `Codec<Self> + Default`. Generic arguments are allowed
///   (`codec = MyCodec<4>`). Strings only name the built-in codecs.
///
/// # Enums and tags
///
/// With `"bincode"` or `"postcard"`, an enum frame is the variant's tag (a
/// `u32` in the format's encoding), then the variant's fields as one tuple
/// (nothing for a variant without fields). The fields must implement
/// `Serialize` and `Deserialize`; the enum itself need not.
///
/// A variant's tag is its position, counting from 0, unless
/// `#[message(tag = N)]` pins it. Unlike serde's variant index, a pinned tag
/// survives reordering variants and adding new ones in between, so pin
/// every tag of an enum that peers of different versions exchange. An
/// unpinned variant keeps its position as its tag even if others are
/// pinned, and discriminants (`Stop = 5`) play no part. A frame with a tag
/// no variant has is an `Error::Decode` whose source is
/// `codec::UnknownTag`.
///
/// # Fingerprint
///
/// The derive also implements `Message::fingerprint`, which the handshake
/// (on by default between peers of derived types) compares with the
/// peer's, and `Message::variant_tags`, the variants' tags and names, with
/// which it says a mismatch in words. The fingerprint is a stable hash of the
/// type's name, its codec, each variant's tag (in the order of the tags)
/// and each field's name and type (a field type that is itself a derived
/// message by its own fingerprint, any other as written). Renaming a field
/// changes it; reordering variants with pinned tags, or renaming a variant,
/// does not. The main crate's `handshake` module says exactly what is
/// covered.
///
/// An enum also gets `Message::variant_fingerprints`: each variant's own
/// fingerprint (its tag and fields). The handshake compares those for the
/// tags both peers have, so adding a variant with a new tag is a
/// compatible change (see the README, "Evolving your messages").
///
/// # Earlier versions
///
/// `#[message(also_decodes = v1::Command)]` (repeatable) declares that the
/// type still decodes the frames of an earlier version of itself, whose
/// definition you keep (in a module `v1`, say): the derive implements
/// `Message::also_decodes` with that type's fingerprint, and the handshake
/// accepts a peer that sends it, whatever the differences. It is a promise
/// that the bytes are the same (a renamed field, `u32` widened to `u64` in
/// a varint format); it helps where the type is received, not an old
/// receiver of the new type.
///
/// # The handler trait
///
/// For `enum Beat`, the derive also generates `trait BeatHandler`, with the
/// enum's visibility and one method per variant, named after the variant in
/// snake case (`HTTPRequest` → `http_request`) and taking its fields by
/// value (`_0`, `_1`, … for a tuple variant) and the `Context`:
///
/// ```text
/// pub trait BeatHandler: Send + Sync + 'static {
///     fn ping(&self, seq: u64, ctx: &mut Context<'_>)
///         -> impl Future<Output = Result<(), BoxError>> + Send;
///     fn stop(&self, ctx: &mut Context<'_>)
///         -> impl Future<Output = Result<(), BoxError>> + Send;
/// }
/// ```
///
/// A struct `Sample` gets `SampleHandler` with one method,
/// `fn sample(&self, msg: Sample, ctx: &mut Context<'_>)`. Implement the
/// trait with `async fn`s and derive [`Handler`](derive@Handler) on the
/// implementing type: each message then reaches its method, with no `match`
/// to write. `#[message(handler = "Name")]` renames the trait.
///
/// # Requests
///
/// `#[message(reply = Reply)]` makes the type a request answered by a
/// `Reply` (a type that is a `Message`): the derive implements
/// `chitchat_net::Request` with `type Reply = Reply`, so that
/// `client.request(&msg)` returns a `Reply`, and the handler trait's
/// methods answer by returning it:
///
/// ```text
/// fn get(&self, key: String, ctx: &mut Context<'_>)
///     -> impl Future<Output = Result<Reply, BoxError>> + Send;
/// ```
///
/// The generated dispatch sends `Ok` with the request's id, and answers
/// `Err` with an error reply (`RequestError::Remote` at the caller), so a
/// method cannot forget to answer. `#[message(deferred)]` on a variant (on
/// the type, for a struct) answers later instead: the method gets a
/// `replier: Replier` before the context and returns `Result<(), BoxError>`;
/// a replier dropped unanswered answers with an error reply. A frame of a
/// request type sent one-way (no request id) still runs its method; with
/// request ids on, the reply is dropped.
///
/// ```
/// use chitchat_net::{BoxError, Context, Handler, Message, Replier};
///
/// #[derive(Debug, Message)]
/// #[message(codec = "bincode", reply = Reply)]
/// enum Command {
///     Get { key: String },
///     #[message(deferred)]
///     Slow { key: String },
/// }
///
/// #[derive(Debug, Message)]
/// #[message(codec = "bincode")]
/// enum Reply { Value { value: String } }
///
/// #[derive(Handler)]
/// #[handler(message = Command)]
/// struct Store;
///
/// impl CommandHandler for Store {
///     async fn get(&self, key: String, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
///         Ok(Reply::Value { value: key })
///     }
///
///     async fn slow(&self, key: String, replier: Replier, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
///         // Answered from another thread, once the work is done.
///         std::thread::spawn(move || {
///             let _ = replier.try_reply(&Reply::Value { value: key });
///         });
///         Ok(())
///     }
/// }
/// # let _ = Store;
/// ```
///
/// # Reply streams
///
/// `#[message(stream = Item)]` makes the type a subscription answered by a
/// stream of `Item`s: the derive implements `chitchat_net::Subscription`
/// with `type Item = Item`, so that `client.subscribe(&msg)` returns a
/// stream of `Item`, and the handler method gets a
/// `sink: ReplySink<Item>` before the context and returns
/// `Result<(), BoxError>` (move the sink into a task and send from there;
/// end with `sink.end()` or `sink.fail(..)`). On an enum without `reply`
/// every variant is answered by a stream; on one with `reply = R` too, the
/// variants marked `#[message(stream)]` are, and the others return `R`.
///
/// # Other attributes
///
/// `#[message(crate = "path")]` names the main crate for code that reaches
/// it through a re-export (default `::chitchat_net`).
///
/// # Constraints
///
/// The derive refuses, with an error at the attribute or item at fault:
/// unions; generic types (implement `Message` by hand); a missing or unknown
/// codec; `"pod"` on an enum; two variants with one tag; `tag` on a struct,
/// or with your own codec (which encodes the whole enum itself); two
/// variants whose method names coincide (`FooBar` and `Foo_Bar`);
/// `deferred` without `reply`, or on an enum itself (it belongs on the
/// variants); `reply` and `stream` both on a struct; a variant marked
/// `stream` in an enum without `stream = Item`, or both `deferred` and
/// `stream`.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use chitchat_net::{BoxError, Codec, Context, Message};
///
/// #[derive(Debug, PartialEq, Message)]
/// #[message(codec = "bincode")]
/// pub enum Beat {
///     #[message(tag = 1)]
///     Ping { seq: u64 },
///     #[message(tag = 2)]
///     Stop,
/// }
///
/// // Tag 1, then the fields: `seq` as a bincode varint.
/// let mut buf = BytesMut::new();
/// <Beat as Message>::Codec::default().encode(&Beat::Ping { seq: 7 }, &mut buf)?;
/// assert_eq!(&buf[..], [1, 7]);
/// let back: Beat = <Beat as Message>::Codec::default().decode(buf.freeze())?;
/// assert_eq!(back, Beat::Ping { seq: 7 });
///
/// // The generated `BeatHandler`: one method per variant.
/// struct Monitor;
///
/// impl BeatHandler for Monitor {
///     async fn ping(&self, seq: u64, ctx: &mut Context<'_>) -> Result<(), BoxError> {
///         ctx.send(&Beat::Ping { seq: seq + 1 })?;
///         Ok(())
///     }
///
///     async fn stop(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
///         ctx.close();
///         Ok(())
///     }
/// }
/// # let _ = Monitor;
/// # Ok::<(), chitchat_net::Error>(())
/// ```
///
/// Two variants with one tag could not be told apart on the wire:
///
/// ```compile_fail
/// use chitchat_net::Message;
///
/// #[derive(Message)]
/// #[message(codec = "bincode")]
/// enum Beat {
///     #[message(tag = 1)]
///     Ping { seq: u64 },
///     #[message(tag = 1)] // error: duplicate tag 1: variant `Ping` already has it
///     Pong { seq: u64 },
/// }
/// ```
#[proc_macro_derive(Message, attributes(message))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_message(&input).into()
}

/// Implements `Handler` for a type that implements a message's handler
/// trait: each message goes to its method.
///
/// `#[handler(message = Beat)]` is required and names the message type,
/// which derives [`Message`](derive@Message); the type deriving `Handler`
/// implements `BeatHandler`, the trait generated for `Beat`. The derive
/// writes:
///
/// ```text
/// impl Handler for Monitor {
///     type Message = Beat;
///     fn handle(&self, msg: Beat, ctx: &mut Context<'_>) -> impl Future<...> + Send {
///         <Beat as Dispatch<Self>>::dispatch(msg, self, ctx)
///     }
/// }
/// ```
///
/// A generic type gets `Handler` wherever it is `Send + Sync + 'static` and
/// implements the handler trait. `#[handler(crate = "path")]` names the
/// main crate, as for `Message`.
///
/// `#[handler(on_open = Self::hello, on_close = Self::bye)]` names the
/// connection hooks: `async fn hello(&self, ctx: &mut Context<'_>) ->
/// Result<(), BoxError>` runs before a connection's first frame (set a
/// per-connection session there with `ctx.set_session`), and `async fn
/// bye(&self, closed: Closed)` once it has ended, with the reason and the
/// session.
///
/// # Constraints
///
/// Refused: unions, and a missing `message`. A type that does not implement
/// the handler trait, or misses one of its methods, gets the compiler's
/// error at the type or at its `impl`.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// use chitchat_net::{BoxError, Context, Handler, Message};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(codec = "bincode")]
/// pub struct Reading {
///     pub celsius: f32,
/// }
///
/// /// Counts readings from every connection.
/// #[derive(Default, Handler)]
/// #[handler(message = Reading)]
/// pub struct Counter {
///     readings: AtomicU64,
/// }
///
/// impl ReadingHandler for Counter {
///     async fn reading(&self, msg: Reading, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
///         if msg.celsius.is_finite() {
///             self.readings.fetch_add(1, Ordering::Relaxed);
///         }
///         Ok(())
///     }
/// }
///
/// fn serve<H: Handler<Message = Reading>>(_handler: H) {}
/// serve(Counter::default());
/// ```
///
/// Without `message`, the derive cannot know which trait to dispatch to:
///
/// ```compile_fail
/// use chitchat_net::Handler;
///
/// #[derive(Handler)] // error: missing message type
/// struct Counter;
/// ```
#[proc_macro_derive(Handler, attributes(handler))]
pub fn derive_handler(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_handler(&input).into()
}
