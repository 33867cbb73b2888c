//! Per-operation errors: each operation's signature says what it can
//! return (tokio's style), and each converts into the crate-wide
//! [`Error`] (what error events carry) with `?`.

use std::time::Duration;

use crate::wire::envelope::ErrorCode;
use crate::wire::error::{BoxError, Error};

/// Why a message was not sent ([`Client::send`](crate::Client::send),
/// [`ConnectionHandle::send`](crate::ConnectionHandle::send), `send_all`,
/// `send_bytes`, [`Replier::reply`](crate::Replier::reply)). Nothing of the
/// message was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closing or has ended.
    #[error("connection closed")]
    Closed,
    /// The message's codec refused it (`Error::Encode`), it is longer than
    /// the frame limit (`Error::FrameTooLong`), it holds the delimiter in
    /// raw framing (`Error::DelimiterInPayload`), or it is an empty frame
    /// the connection refuses: [`Error`] says which.
    #[error(transparent)]
    Unsendable(Error),
}

/// Why [`try_send`](crate::Client::try_send) (or
/// [`Replier::try_reply`](crate::Replier::try_reply)) did not queue a
/// message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// The outgoing queue holds `limit` unsent bytes or more: try later, or
    /// `send` (which waits).
    #[error("outgoing queue full ({limit} bytes): message skipped")]
    Full {
        /// The queue's bound in bytes.
        limit: usize,
    },
    /// The connection is closing or has ended.
    #[error("connection closed")]
    Closed,
    /// As [`SendError::Unsendable`].
    #[error(transparent)]
    Unsendable(Error),
}

/// Why a [`request`](crate::Client::request) got no reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No reply within the timeout; a reply that comes later is an
    /// [`Error::LateReply`] event.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection ended before the reply came. Never retried: the peer
    /// may or may not have handled the request.
    #[error("the connection ended before the reply arrived")]
    ConnectionLost,
    /// The connection is closing or has ended (nothing was sent).
    #[error("connection closed")]
    Closed,
    /// The server announced a drain on this connection (it is shutting
    /// down gracefully): the request was not sent. A reconnecting client's
    /// [`Client::request`](crate::Client::request) never fails with it: it
    /// sends the request on its next connection.
    #[error("the server is draining: the request was not sent")]
    Draining,
    /// Requests are not on: `request_ids()` (both ends) or
    /// `ordered_replies()` on the builder.
    #[error("requests need `request_ids()` (or `ordered_replies()`) on the builder")]
    NotEnabled,
    /// The request could not be sent (as [`SendError::Unsendable`]).
    #[error(transparent)]
    Unsendable(Error),
    /// The reply came but did not decode into the asked type.
    #[error("the reply did not decode: {0}")]
    BadReply(Error),
    /// The peer answered with an error reply instead (request ids on both
    /// ends): its handler failed on the request (`code`
    /// [`ErrorCode::Handler`], `message` the handler's error), the request
    /// did not decode there ([`ErrorCode::BadRequest`]: the peer expects
    /// another type or version), or it was handed to a
    /// [`Replier`](crate::Replier) dropped without answering
    /// ([`ErrorCode::Unanswered`]). Never retried.
    #[error("the peer answered with an error ({code}): {message}")]
    Remote {
        /// Why, as the peer says.
        code: ErrorCode,
        /// The peer's text (at most 1 KiB).
        message: String,
    },
}

/// Why connecting failed ([`ClientBuilder::connect`](crate::ClientBuilder::connect)
/// and its siblings).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection was refused or failed, or the name did not resolve;
    /// the message names the address.
    #[error("i/o error: {0}")]
    Io(#[source] std::io::Error),
    /// Connecting (with the TLS handshake, if any) took longer than the
    /// connect timeout.
    #[error("connect did not complete within {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed.
    #[error("tls handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// A setting that cannot work, or a call outside a tokio runtime.
    #[error("{0}")]
    Config(Error),
    /// The `on_connect` hook failed; the connection is closed.
    #[error("on_connect failed: {}", crate::wire::error::Report(&**.0))]
    Hello(#[source] BoxError),
    /// The [handshake](crate::handshake) failed: the server speaks another
    /// protocol (the first difference, in words: "the server uses request
    /// ids, this client ordered replies"), has its handshake off, or sent
    /// no hello within the handshake timeout. The connection is closed.
    #[error("handshake with the server failed: {0}")]
    Handshake(#[source] crate::wire::hello::HandshakeError),
}

impl From<SendError> for Error {
    fn from(error: SendError) -> Self {
        match error {
            SendError::Closed => Error::Closed,
            SendError::Unsendable(error) => error,
        }
    }
}

impl From<TrySendError> for Error {
    fn from(error: TrySendError) -> Self {
        match error {
            TrySendError::Full { limit } => Error::QueueFull { limit },
            TrySendError::Closed => Error::Closed,
            TrySendError::Unsendable(error) => error,
        }
    }
}

impl From<RequestError> for Error {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Timeout(timeout) => Error::RequestTimeout(timeout),
            RequestError::ConnectionLost => Error::ConnectionLost,
            RequestError::Closed => Error::Closed,
            RequestError::Draining => Error::Draining,
            RequestError::NotEnabled => Error::Config(
                "requests need `request_ids()` (or `ordered_replies()`) on the builder",
            ),
            RequestError::Unsendable(error) | RequestError::BadReply(error) => error,
            RequestError::Remote { code, message } => Error::Remote { code, message },
        }
    }
}

impl From<ConnectError> for Error {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::Io(error) => Error::Io(error),
            ConnectError::Timeout(timeout) => Error::ConnectTimeout(timeout),
            ConnectError::Tls(error) => Error::Tls(error),
            ConnectError::Config(error) => error,
            ConnectError::Hello(error) => Error::Handler(error),
            ConnectError::Handshake(error) => Error::Handshake(error),
        }
    }
}

impl From<SendError> for TrySendError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::Closed => TrySendError::Closed,
            SendError::Unsendable(error) => TrySendError::Unsendable(error),
        }
    }
}

impl From<SendError> for RequestError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::Closed => RequestError::Closed,
            SendError::Unsendable(error) => RequestError::Unsendable(error),
        }
    }
}

impl SendError {
    /// From what the queue or the encoder said (`Closed`, or an encode or
    /// framing error).
    pub(crate) fn from_error(error: Error) -> Self {
        match error {
            Error::Closed => SendError::Closed,
            other => SendError::Unsendable(other),
        }
    }
}

impl RequestError {
    /// From what the request table or the queue said.
    pub(crate) fn from_error(error: Error) -> Self {
        match error {
            Error::ConnectionLost => RequestError::ConnectionLost,
            Error::Closed => RequestError::Closed,
            Error::Draining => RequestError::Draining,
            other => RequestError::Unsendable(other),
        }
    }
}

impl ConnectError {
    /// From what dialling said.
    pub(crate) fn from_error(error: Error) -> Self {
        match error {
            Error::Io(error) => ConnectError::Io(error),
            Error::ConnectTimeout(timeout) => ConnectError::Timeout(timeout),
            Error::Tls(error) => ConnectError::Tls(error),
            Error::Handler(error) => ConnectError::Hello(error),
            Error::Handshake(error) => ConnectError::Handshake(error),
            other => ConnectError::Config(other),
        }
    }
}
