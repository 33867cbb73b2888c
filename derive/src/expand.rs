//! Code generation only: every decision was made by the earlier steps.
//!
//! Everything generated names items by absolute path (`::core::…` and the
//! main crate's path), so that user code cannot shadow them, and locals and
//! generic parameters get `__`-prefixed names so that they cannot collide
//! with the user's field names or types.

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::{DeriveInput, Error, Fields, Ident, Path, Type};

use crate::ast::{Field, Handler, Message, Shape, Variant};
use crate::attr::{Builtin, CodecAttr};

/// `#[derive(Message)]`.
pub(crate) fn derive_message(node: &DeriveInput) -> TokenStream {
    let mut input = Message::from_syn(node);
    input.validate();
    let handler = if input.handler_ok {
        handler_trait(&input)
    } else {
        TokenStream::new()
    };
    let mut request = request_impl(&input);
    request.extend(subscription_impl(&input));
    if let Some(error) = combine(std::mem::take(&mut input.errors)) {
        let fallback = message_fallback(node, &input.krate, error);
        return quote! {
            #fallback
            #request
            #handler
        };
    }
    let message = message_impl(&input);
    quote! {
        #message
        #request
        #handler
    }
}

/// `#[derive(Handler)]`.
pub(crate) fn derive_handler(node: &DeriveInput) -> TokenStream {
    let mut input = Handler::from_syn(node);
    input.validate();
    let errors = std::mem::take(&mut input.errors);
    match (combine(errors), &input.attrs.message) {
        (None, Some(message)) => handler_impl(&input, message),
        (Some(error), message) => handler_fallback(node, &input.krate, message.as_ref(), error),
        // `validate` reports a missing message type.
        (None, None) => unreachable!("a handler without a message type was validated"),
    }
}

/// The `Message` impl, and the `TaggedEnum` impl of an enum over a serde
/// format.
fn message_impl(input: &Message<'_>) -> TokenStream {
    let ident = &input.original.ident;
    let krate = &input.krate;
    let codec = input
        .attrs
        .codec
        .as_ref()
        .expect("validated: a codec is present");
    let codec_ty = match (codec, &input.shape) {
        (CodecAttr::Type(ty), _) => ty.to_token_stream(),
        (CodecAttr::Builtin(builtin, _), Shape::Struct { .. }) => builtin_codec(krate, *builtin),
        (CodecAttr::Builtin(builtin, _), Shape::Enum(_)) => {
            let format = builtin_codec(krate, *builtin);
            quote!(#krate::codec::Tagged<#format>)
        }
        (CodecAttr::Unknown(_), _) => unreachable!("validated: the codec is known"),
    };
    // Spanned at the codec as written, so that "`Sample: Serialize` is not
    // satisfied" and "`Sample: Pod` is not satisfied" point at `codec = ...`.
    // This is also the check that a "pod" type is `Pod`: a separate
    // `assert_pod::<Sample>()` would repeat the same error at the same place
    // (rustc does not merge the two).
    let codec_ty = respan(codec_ty, codec.span());
    let fingerprint = fingerprint_fn(input, codec);
    let variant_tags = variant_tags_fn(input);
    let mut out = quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #krate::Message for #ident {
            type Codec = #codec_ty;

            #fingerprint

            #variant_tags
        }
    };
    if let (CodecAttr::Builtin(..), Shape::Enum(variants)) = (codec, &input.shape) {
        out.extend(tagged_enum_impl(input, variants));
    }
    out
}

/// `Message::fingerprint`: the type's kind and name, its codec, and, in
/// the order of their tags, each variant's tag and fields (see the main
/// crate's `handshake` module for what is covered).
fn fingerprint_fn(input: &Message<'_>, codec: &CodecAttr) -> TokenStream {
    let ident = &input.original.ident;
    let krate = &input.krate;
    let name = ident.to_string();
    let name = name.strip_prefix("r#").unwrap_or(&name);
    let codec = match codec {
        CodecAttr::Builtin(builtin, _) => match builtin {
            Builtin::Bincode => "bincode".to_owned(),
            Builtin::Postcard => "postcard".to_owned(),
            Builtin::Pod => "pod".to_owned(),
        },
        CodecAttr::Type(ty) => spelling(&ty.to_token_stream(), ident),
        CodecAttr::Unknown(_) => unreachable!("validated: the codec is known"),
    };
    let field = |index: usize, field: &syn::Field| {
        let name = match &field.ident {
            Some(ident) => ident.to_string().trim_start_matches("r#").to_owned(),
            None => index.to_string(),
        };
        let ty = &field.ty;
        let spelled = spelling(&ty.to_token_stream(), ident);
        quote! {
            .field(#name, #spelled, (&__Probe::<#ty>::new()).nested_fingerprint())
        }
    };
    let (kind, pieces) = match (&input.shape, &input.original.data) {
        (Shape::Enum(variants), _) => {
            let mut sorted: Vec<_> = variants.iter().collect();
            sorted.sort_by_key(|variant| variant.tag);
            let pieces = sorted.iter().map(|variant| {
                let tag = variant.tag;
                let fields = variant.original.fields.iter().enumerate();
                let fields = fields.map(|(i, f)| field(i, f));
                quote!(.variant(#tag) #(#fields)*)
            });
            ("enum", quote!(#(#pieces)*))
        }
        (Shape::Struct { .. }, syn::Data::Struct(data)) => {
            let fields = data.fields.iter().enumerate().map(|(i, f)| field(i, f));
            ("struct", quote!(#(#fields)*))
        }
        (Shape::Struct { .. }, _) => ("struct", TokenStream::new()),
    };
    let fingerprint = quote!(#krate::handshake::Fingerprint);
    // Each variant's own fingerprint: its tag and fields, for the
    // handshake to compare the tags both peers have.
    let variant_fingerprints = match &input.shape {
        Shape::Enum(variants) => {
            let mut sorted: Vec<_> = variants.iter().collect();
            sorted.sort_by_key(|variant| variant.tag);
            let entries = sorted.iter().map(|variant| {
                let tag = variant.tag;
                let fields = variant.original.fields.iter().enumerate();
                let fields = fields.map(|(i, f)| field(i, f));
                quote! {
                    (#tag, #krate::handshake::FingerprintBuilder::new("variant", "")
                        .variant(#tag) #(#fields)* .finish())
                }
            });
            quote! {
                fn variant_fingerprints() -> ::std::vec::Vec<(u32, #fingerprint)> {
                    #[allow(unused_imports)]
                    use #krate::handshake::__probe::{
                        Probe as __Probe, ViaMessage as _, ViaSpelling as _,
                    };
                    ::std::vec![#(#entries),*]
                }
            }
        }
        Shape::Struct { .. } => TokenStream::new(),
    };
    let also_decodes = if input.attrs.also_decodes.is_empty() {
        TokenStream::new()
    } else {
        let earlier = input.attrs.also_decodes.iter().map(|ty| {
            quote_spanned! {syn::spanned::Spanned::span(ty)=>
                <#ty as #krate::Message>::fingerprint()
            }
        });
        quote! {
            fn also_decodes() -> ::std::vec::Vec<#fingerprint> {
                [#(#earlier),*].into_iter().flatten().collect()
            }
        }
    };
    quote! {
        #variant_fingerprints

        #also_decodes

        fn fingerprint() -> ::core::option::Option<#fingerprint> {
            #[allow(unused_imports)]
            use #krate::handshake::__probe::{
                Probe as __Probe, ViaMessage as _, ViaSpelling as _,
            };
            ::core::option::Option::Some(
                #krate::handshake::FingerprintBuilder::new(#kind, #name)
                    .codec(#codec)
                    #pieces
                    .finish(),
            )
        }
    }
}

/// `Message::variant_tags`: an enum's variants' tags and names, in the
/// order of the tags, which the handshake sends to say a mismatch in words
/// (nothing for a struct: the default).
fn variant_tags_fn(input: &Message<'_>) -> TokenStream {
    let Shape::Enum(variants) = &input.shape else {
        return TokenStream::new();
    };
    let mut sorted: Vec<_> = variants.iter().collect();
    sorted.sort_by_key(|variant| variant.tag);
    let pairs = sorted.iter().map(|variant| {
        let tag = variant.tag;
        let name = variant.original.ident.to_string();
        let name = name.strip_prefix("r#").unwrap_or(&name).to_owned();
        quote!((#tag, #name))
    });
    quote! {
        fn variant_tags() -> &'static [(u32, &'static str)] {
            &[#(#pairs),*]
        }
    }
}

/// A type as written, without spaces, with `Self` replaced by the
/// message's name: what a fingerprint covers of a type that is not a
/// message.
fn spelling(tokens: &TokenStream, ident: &Ident) -> String {
    let text = replace_self_tokens(tokens.clone(), ident).to_string();
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

fn builtin_codec(krate: &Path, builtin: Builtin) -> TokenStream {
    match builtin {
        Builtin::Bincode => quote!(#krate::Bincode),
        Builtin::Postcard => quote!(#krate::Postcard),
        Builtin::Pod => quote!(#krate::PodCodec),
    }
}

/// The wire tags of an enum and its fields as one tuple per variant.
fn tagged_enum_impl(input: &Message<'_>, variants: &[Variant<'_>]) -> TokenStream {
    let ident = &input.original.ident;
    let krate = &input.krate;
    let format = quote!(#krate::codec::SerdeFormat);
    let result = quote!(::core::result::Result);
    let bytes = quote!(#krate::__private::bytes);

    let tag_arms = variants.iter().map(|variant| {
        let (name, tag) = (&variant.original.ident, variant.tag);
        quote!(Self::#name { .. } => #tag,)
    });
    let encode_arms = variants.iter().map(|variant| {
        let pattern = pattern(variant, quote!(ref));
        let fields = bindings(variant);
        if variant.fields.is_empty() {
            quote!(#pattern => #result::Ok(()),)
        } else {
            quote!(#pattern => <__F as #format>::encode_value(format, &(#(#fields,)*), dst),)
        }
    });
    let decode_arms = variants.iter().map(|variant| {
        let tag = variant.tag;
        let build = pattern(variant, TokenStream::new());
        if variant.fields.is_empty() {
            return quote!(#tag => #result::Ok((#build, 0)),);
        }
        let fields = bindings(variant);
        let types = variant.fields.iter().map(|field| field.ty);
        quote! {
            #tag => {
                let ((#(#fields,)*), __len) =
                    <__F as #format>::decode_prefix::<(#(#types,)*)>(format, bytes)?;
                #result::Ok((#build, __len))
            }
        }
    });
    let name_arms = variants.iter().map(|variant| {
        let tag = variant.tag;
        let full = format!("{}::{}", ident, variant.original.ident);
        quote!(#tag => ::core::option::Option::Some(#full),)
    });
    // With no fields anywhere, `format`, `dst` and `bytes` are never read.
    let (unused_encode, unused_decode) = if variants.iter().all(|v| v.fields.is_empty()) {
        (quote!(let _ = (format, dst);), quote!(let _ = bytes;))
    } else {
        (TokenStream::new(), TokenStream::new())
    };

    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #krate::codec::TaggedEnum for #ident {
            fn tag(&self) -> u32 {
                match *self {
                    #(#tag_arms)*
                }
            }

            fn variant_name(tag: u32) -> ::core::option::Option<&'static str> {
                match tag {
                    #(#name_arms)*
                    _ => ::core::option::Option::None,
                }
            }

            fn encode_fields<__F: #format>(
                &self,
                format: &__F,
                dst: &mut #bytes::BytesMut,
            ) -> #result<(), #krate::Error> {
                #unused_encode
                match *self {
                    #(#encode_arms)*
                }
            }

            fn decode_fields<__F: #format>(
                format: &__F,
                tag: u32,
                bytes: &[u8],
            ) -> #result<(Self, usize), #krate::Error> {
                #unused_decode
                match tag {
                    #(#decode_arms)*
                    tag => #result::Err(#krate::Error::decode(
                        <__F as #format>::name(format),
                        #krate::codec::UnknownTag { tag },
                    )),
                }
            }
        }
    }
}

/// The handler trait (`BeatHandler`) and the `Dispatch` impl routing each
/// message to its method.
fn handler_trait(input: &Message<'_>) -> TokenStream {
    let ident = &input.original.ident;
    let vis = &input.original.vis;
    let krate = &input.krate;
    let trait_ident = &input.handler_trait;
    let future = handler_future(krate);
    let name = ident.to_string();

    let reply = input.attrs.reply.as_ref().map(|ty| replace_self(ty, ident));
    let item = input
        .attrs
        .stream
        .as_ref()
        .map(|ty| replace_self(ty, ident));
    // How a method answers: not at all (one-way messages), by returning
    // the reply, through a `Replier` (`deferred`), or through a
    // `ReplySink` (a subscription: every variant of an enum without
    // `reply`, the variants marked `stream` of one with it).
    let answer = |deferred: bool, stream: bool| match (&reply, &item) {
        (None, Some(item)) => Answer::Stream(item.clone()),
        (Some(_), Some(item)) if stream => Answer::Stream(item.clone()),
        (None, None) => Answer::None,
        (Some(_), _) if deferred => Answer::Deferred,
        (Some(reply), _) => Answer::Returns(reply.clone()),
    };

    let (doc, methods, body) = match &input.shape {
        Shape::Struct { method } => {
            let answer = answer(input.attrs.deferred.is_some(), false);
            let doc = format!("Handles one [`{name}`] message.{}", answer.doc());
            let mut params = vec![quote!(msg: #ident)];
            params.extend(answer.replier_param(krate, &format_ident!("replier")));
            params.extend(answer.sink_param(krate, &format_ident!("sink")));
            let methods = handler_method(
                krate,
                method,
                &doc,
                &params,
                &format_ident!("ctx"),
                &answer.output(),
            );
            let call = quote!(<__H as #trait_ident>::#method);
            let body = answer.call(krate, &call, &[quote!(self)]);
            (format!("Handles [`{name}`] messages."), methods, body)
        }
        Shape::Enum(variants) => {
            let methods = variants.iter().map(|variant| {
                let answer = answer(
                    variant.attrs.deferred.is_some(),
                    variant.attrs.stream.is_some(),
                );
                let doc = format!(
                    "Handles a [`{name}::{}`] message.{}",
                    variant.original.ident,
                    answer.doc()
                );
                let mut params: Vec<_> = variant
                    .fields
                    .iter()
                    .map(|field| {
                        let (param, ty) = (&field.param, replace_self(field.ty, ident));
                        quote!(#param: #ty)
                    })
                    .collect();
                params.extend(answer.replier_param(krate, &replier_param(variant)));
                params.extend(answer.sink_param(krate, &sink_param(variant)));
                let ctx = context_param(variant);
                handler_method(
                    krate,
                    &variant.method,
                    &doc,
                    &params,
                    &ctx,
                    &answer.output(),
                )
            });
            let arms = variants.iter().map(|variant| {
                let answer = answer(
                    variant.attrs.deferred.is_some(),
                    variant.attrs.stream.is_some(),
                );
                let method = &variant.method;
                let pattern = pattern(variant, TokenStream::new());
                let fields: Vec<_> = bindings(variant).into_iter().map(|b| quote!(#b)).collect();
                let call = quote!(<__H as #trait_ident>::#method);
                let call = answer.call(krate, &call, &fields);
                quote! {
                    #pattern => { #call }
                }
            });
            let body = quote!(match self { #(#arms)* });
            let doc = format!("Handles [`{name}`] messages: one method per variant.");
            (doc, quote!(#(#methods)*), body)
        }
    };
    let usage = format!(
        "Generated by `#[derive(Message)]`. Implement it with `async fn`s, then derive \
         `Handler` with `#[handler(message = {name})]` on the implementing type."
    );
    let unimplemented = on_unimplemented(&name, trait_ident);
    // The trait's header is spanned at the message's name, where rustc's
    // notes about the trait ("this trait has no implementations") point.
    let header = respan(
        quote!(trait #trait_ident: ::core::marker::Send + ::core::marker::Sync + 'static),
        ident.span(),
    );
    let mut methods = Group::new(Delimiter::Brace, methods);
    methods.set_span(ident.span());

    quote! {
        #[doc = #doc]
        #[doc = ""]
        #[doc = #usage]
        #unimplemented
        #[allow(unused_qualifications)]
        #vis #header #methods

        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl<__H: #trait_ident + ?::core::marker::Sized> #krate::Dispatch<__H> for #ident {
            fn dispatch(
                self,
                handler: &__H,
                ctx: &mut #krate::Context<'_>,
            ) -> #future {
                async move { #body }
            }
        }
    }
}

/// How a handler method answers the message it handles.
enum Answer {
    /// It does not: the message is not a request (no `reply = ...`).
    None,
    /// It returns the reply, of this type; the dispatch sends it.
    Returns(TokenStream),
    /// It gets a `Replier` and answers through it (`deferred`).
    Deferred,
    /// It gets a `ReplySink` of this item type and answers with a stream.
    Stream(TokenStream),
}

impl Answer {
    /// What the method's result holds on success.
    fn output(&self) -> TokenStream {
        match self {
            Answer::Returns(reply) => reply.clone(),
            Answer::None | Answer::Deferred | Answer::Stream(_) => quote!(()),
        }
    }

    /// The `ReplySink` parameter, for a method answered by a stream.
    fn sink_param(&self, krate: &Path, name: &Ident) -> Option<TokenStream> {
        match self {
            Answer::Stream(item) => Some(quote!(#name: #krate::ReplySink<#item>)),
            _ => None,
        }
    }

    /// The `Replier` parameter, for a deferred method.
    fn replier_param(&self, krate: &Path, name: &Ident) -> Option<TokenStream> {
        matches!(self, Answer::Deferred).then(|| quote!(#name: #krate::Replier))
    }

    /// What the method's doc adds.
    fn doc(&self) -> &'static str {
        match self {
            Answer::None => "",
            Answer::Returns(_) => {
                " A request: what it returns is the reply (an error is answered with an \
                 error reply)."
            }
            Answer::Deferred => {
                " A request answered through `replier`, from any task; dropping it \
                 unanswered answers with an error reply."
            }
            Answer::Stream(_) => {
                " A subscription answered by a stream of items sent through `sink`, from \
                 any task (move it into one); end it with `sink.end()` or `sink.fail(..)`."
            }
        }
    }

    /// The dispatch's call of `method` with `args` (then `ctx`), and what
    /// it does with the result.
    fn call(&self, krate: &Path, method: &TokenStream, args: &[TokenStream]) -> TokenStream {
        let reply = Ident::new("__reply", Span::mixed_site());
        let replier = Ident::new("__replier", Span::mixed_site());
        match self {
            Answer::None => quote!(#method(handler, #(#args,)* ctx).await),
            Answer::Returns(_) => quote! {
                let #reply = #method(handler, #(#args,)* ctx).await;
                #krate::Context::answer(ctx, #reply)
            },
            Answer::Deferred => quote! {
                let #replier = #krate::Context::replier(ctx);
                #method(handler, #(#args,)* #replier, ctx).await
            },
            Answer::Stream(item) => {
                let sink = Ident::new("__sink", Span::mixed_site());
                quote! {
                    let #sink = #krate::Context::reply_stream::<#item>(ctx)?;
                    #method(handler, #(#args,)* #sink, ctx).await
                }
            }
        }
    }
}

/// The `impl Subscription` of a message with `stream = ...`, spanned at
/// the item type.
fn subscription_impl(input: &Message<'_>) -> TokenStream {
    let (Some(item), true) = (
        &input.attrs.stream,
        input.original.generics.params.is_empty(),
    ) else {
        return TokenStream::new();
    };
    let ident = &input.original.ident;
    let krate = &input.krate;
    let span = syn::spanned::Spanned::span(item);
    let item = replace_self(item, ident);
    let assoc = respan(quote!(type Item = #item;), span);
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #krate::Subscription for #ident {
            #assoc
        }
    }
}

/// The `impl Request` of a message with `reply = ...`, spanned at the
/// reply type (where "`Reply: Message` is not satisfied" belongs).
fn request_impl(input: &Message<'_>) -> TokenStream {
    let (Some(reply), true) = (
        &input.attrs.reply,
        input.original.generics.params.is_empty(),
    ) else {
        return TokenStream::new();
    };
    let ident = &input.original.ident;
    let krate = &input.krate;
    let reply = replace_self(reply, ident);
    let span = input
        .attrs
        .reply
        .as_ref()
        .map_or(ident.span(), syn::spanned::Spanned::span);
    let assoc = respan(quote!(type Reply = #reply;), span);
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #krate::Request for #ident {
            #assoc
        }
    }
}

/// One method of the handler trait. Its signature is spanned at `method`
/// (the variant's or type's name), so that "missing `pong` in
/// implementation" shows `pong` coming from the variant `Pong`.
fn handler_method(
    krate: &Path,
    method: &Ident,
    doc: &str,
    params: &[TokenStream],
    ctx: &Ident,
    output: &TokenStream,
) -> TokenStream {
    let span = method.span();
    let future = respan(handler_future_of(krate, output), span);
    let context = respan(quote!(&mut #krate::Context<'_>), span);
    // `self`, the fields and the context: clippy's limit is 7.
    let allow = (params.len() + 2 > 7).then(|| quote!(#[allow(clippy::too_many_arguments)]));
    quote_spanned! {span=>
        #[doc = #doc]
        #allow
        fn #method(&self, #(#params,)* #ctx: #context) -> #future;
    }
}

/// What a handler method returns.
fn handler_future(krate: &Path) -> TokenStream {
    handler_future_of(krate, &quote!(()))
}

/// What a handler method returns that answers with `output`.
fn handler_future_of(krate: &Path, output: &TokenStream) -> TokenStream {
    quote! {
        impl ::core::future::Future<
            Output = ::core::result::Result<#output, #krate::BoxError>
        > + ::core::marker::Send
    }
}

/// Points a handler that does not implement the trait at the fix.
fn on_unimplemented(message: &str, trait_ident: &Ident) -> TokenStream {
    let text = format!("`{{Self}}` does not handle `{message}` messages");
    let label = format!("`{{Self}}` needs an `impl {trait_ident} for {{Self}}`");
    let note = format!(
        "`#[handler(message = {message})]` dispatches each `{message}` to a method of \
         `{trait_ident}`: implement it with one `async fn` per kind of message"
    );
    quote! {
        #[diagnostic::on_unimplemented(message = #text, label = #label, note = #note)]
    }
}

/// The `Handler` impl: hands each message to its `Dispatch` impl.
fn handler_impl(input: &Handler<'_>, message: &Type) -> TokenStream {
    let ident = &input.original.ident;
    let krate = &input.krate;
    let (impl_generics, ty_generics, where_clause) = input.original.generics.split_for_impl();
    let future = handler_future(krate);
    // A generic handler implements `Handler` only where it can.
    let mut where_clause = where_clause.cloned();
    if !input.original.generics.params.is_empty() {
        let clause = where_clause.get_or_insert_with(|| syn::parse_quote!(where));
        clause.predicates.push(syn::parse_quote! {
            Self: ::core::marker::Send + ::core::marker::Sync + 'static
        });
        clause
            .predicates
            .push(syn::parse_quote!(#message: #krate::Dispatch<Self>));
    }
    // Spanned at the handler's name, where "`Monitor` does not handle `Beat`
    // messages" belongs when `BeatHandler` is not implemented.
    let handle = respan(
        quote! {
            fn handle(&self, msg: #message, ctx: &mut #krate::Context<'_>) -> #future {
                <#message as #krate::Dispatch<Self>>::dispatch(msg, self, ctx)
            }
        },
        ident.span(),
    );
    // The hooks, if named: `fn(&self, &mut Context)` and `fn(&self, Closed)`.
    let on_open = input.attrs.on_open.as_ref().map(|path| {
        quote! {
            fn on_open(&self, ctx: &mut #krate::Context<'_>) -> #future {
                #path(self, ctx)
            }
        }
    });
    let on_close = input.attrs.on_close.as_ref().map(|path| {
        quote! {
            fn on_close(
                &self,
                closed: #krate::Closed,
            ) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send {
                #path(self, closed)
            }
        }
    });
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #impl_generics #krate::Handler for #ident #ty_generics #where_clause {
            type Message = #message;

            #handle
            #on_open
            #on_close
        }
    }
}

/// On invalid input: the errors, plus a `Message` impl that type-checks
/// whatever the input, so that code using the type reports nothing more.
fn message_fallback(node: &DeriveInput, krate: &Path, error: Error) -> TokenStream {
    let error = error.to_compile_error();
    let ident = &node.ident;
    let (impl_generics, ty_generics, where_clause) = node.generics.split_for_impl();
    let where_clause = workaround_bound(
        &node.generics,
        where_clause,
        quote! {
            #ident #ty_generics: ::core::marker::Send + 'static
        },
    );
    let bytes = quote!(#krate::__private::bytes);
    let result = quote!(::core::result::Result);
    quote! {
        #error

        const _: () = {
            #[doc(hidden)]
            pub struct __Invalid;

            impl ::core::default::Default for __Invalid {
                fn default() -> Self {
                    __Invalid
                }
            }

            impl<T: ::core::marker::Send + 'static> #krate::Codec<T> for __Invalid {
                fn name(&self) -> &'static str {
                    ::core::unreachable!()
                }
                fn is_binary(&self) -> bool {
                    ::core::unreachable!()
                }
                fn encode(&self, _: &T, _: &mut #bytes::BytesMut) -> #result<(), #krate::Error> {
                    ::core::unreachable!()
                }
                fn decode(&self, _: #bytes::Bytes) -> #result<T, #krate::Error> {
                    ::core::unreachable!()
                }
            }

            #[automatically_derived]
            #[allow(unused_qualifications)]
            impl #impl_generics #krate::Message for #ident #ty_generics #where_clause {
                type Codec = __Invalid;
            }
        };
    }
}

/// On invalid input: the errors, plus a `Handler` impl (for the message
/// type if one was given) that type-checks whatever the input.
fn handler_fallback(
    node: &DeriveInput,
    krate: &Path,
    message: Option<&Type>,
    error: Error,
) -> TokenStream {
    let error = error.to_compile_error();
    let ident = &node.ident;
    let (impl_generics, ty_generics, where_clause) = node.generics.split_for_impl();
    let where_clause = workaround_bound(
        &node.generics,
        where_clause,
        quote! {
            #ident #ty_generics: ::core::marker::Send + ::core::marker::Sync + 'static
        },
    );
    let message = match message {
        Some(message) => message.to_token_stream(),
        None => quote!(#krate::__private::bytes::Bytes),
    };
    let future = handler_future(krate);
    quote! {
        #error

        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #impl_generics #krate::Handler for #ident #ty_generics #where_clause {
            type Message = #message;

            fn handle(&self, _: #message, _: &mut #krate::Context<'_>) -> #future {
                async { ::core::unreachable!() }
            }
        }
    }
}

/// For a generic type, `where ..., for<'__w> Bound`: the stub cannot know
/// which bounds the parameters need, and the `for` keeps rustc from checking
/// the bound eagerly (trivial bounds are unstable). A concrete type keeps
/// the trait's own requirements, so that a type that is not `Send` gets one
/// error here rather than one per use.
fn workaround_bound(
    generics: &syn::Generics,
    where_clause: Option<&syn::WhereClause>,
    bound: TokenStream,
) -> TokenStream {
    if generics.params.is_empty() {
        return where_clause.to_token_stream();
    }
    let predicates = where_clause.into_iter().flat_map(|w| w.predicates.iter());
    quote!(where #(#predicates,)* for<'__w> #bound)
}

/// The replier parameter of a deferred handler method: `replier`, unless a
/// field is already called that.
fn replier_param(variant: &Variant<'_>) -> Ident {
    if variant.fields.iter().any(|field| field.param == "replier") {
        format_ident!("__replier")
    } else {
        format_ident!("replier")
    }
}

/// The sink parameter of a streaming handler method: `sink`, unless a
/// field is already called that.
fn sink_param(variant: &Variant<'_>) -> Ident {
    if variant.fields.iter().any(|field| field.param == "sink") {
        format_ident!("__sink")
    } else {
        format_ident!("sink")
    }
}

/// The context parameter of a handler method: `ctx`, unless a field is
/// already called that.
fn context_param(variant: &Variant<'_>) -> Ident {
    if variant.fields.iter().any(|field| field.param == "ctx") {
        format_ident!("__ctx")
    } else {
        format_ident!("ctx")
    }
}

/// `Self::V { a: __field0, b: __field1 }`, `Self::V(__field0)` or `Self::V`;
/// `by` is `ref` to bind by reference.
fn pattern(variant: &Variant<'_>, by: TokenStream) -> TokenStream {
    let name = &variant.original.ident;
    let fields = variant.fields.iter().zip(bindings(variant));
    match &variant.original.fields {
        Fields::Named(_) => {
            let fields = fields.map(|(field, binding)| {
                let member = field_name(field);
                quote!(#member: #by #binding)
            });
            quote!(Self::#name { #(#fields),* })
        }
        Fields::Unnamed(_) => {
            let fields = fields.map(|(_, binding)| quote!(#by #binding));
            quote!(Self::#name(#(#fields),*))
        }
        Fields::Unit => quote!(Self::#name),
    }
}

fn field_name<'a>(field: &'a Field<'_>) -> &'a Ident {
    field.original.ident.as_ref().unwrap_or(&field.param)
}

/// `__field0, __field1, …`: one local per field of the variant.
fn bindings(variant: &Variant<'_>) -> Vec<Ident> {
    (0..variant.fields.len())
        .map(|i| format_ident!("__field{}", i, span = Span::mixed_site()))
        .collect()
}

/// A field type with `Self` replaced by the message's name, for the handler
/// trait, where `Self` would mean the handler.
fn replace_self(ty: &Type, ident: &Ident) -> TokenStream {
    replace_self_tokens(ty.to_token_stream(), ident)
}

/// `tokens` with every `Self` replaced by the message's name.
fn replace_self_tokens(tokens: TokenStream, ident: &Ident) -> TokenStream {
    fn walk(tokens: TokenStream, ident: &Ident) -> TokenStream {
        tokens
            .into_iter()
            .map(|token| match token {
                TokenTree::Ident(i) if i == "Self" => {
                    TokenTree::Ident(Ident::new(&ident.to_string(), i.span()))
                }
                TokenTree::Group(g) => {
                    let mut group = Group::new(g.delimiter(), walk(g.stream(), ident));
                    group.set_span(g.span());
                    TokenTree::Group(group)
                }
                other => other,
            })
            .collect()
    }
    walk(tokens, ident)
}

/// Every token of `tokens`, spanned at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(g) = &token {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                token = TokenTree::Group(group);
            }
            token.set_span(span);
            token
        })
        .collect()
}

fn combine(errors: Vec<Error>) -> Option<Error> {
    errors.into_iter().reduce(|mut all, error| {
        all.combine(error);
        all
    })
}

#[cfg(test)]
mod tests {
    use syn::{File, Item};

    use super::*;

    /// The expansion parsed back, so that tests look at items, not text.
    fn items(tokens: TokenStream) -> Vec<Item> {
        syn::parse2::<File>(tokens)
            .expect("the expansion parses")
            .items
    }

    /// `impl <trait path> for ...` → the trait path's last segment.
    fn impls(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .filter_map(|item| match item {
                Item::Impl(item) => item.trait_.as_ref(),
                _ => None,
            })
            .map(|(_, path, _)| path.segments.last().unwrap().ident.to_string())
            .collect()
    }

    fn has_compile_error(items: &[Item]) -> bool {
        items.iter().any(|item| match item {
            Item::Macro(m) => m.mac.path.segments.last().unwrap().ident == "compile_error",
            _ => false,
        })
    }

    #[test]
    fn enum_expands_to_message_tags_trait_and_dispatch() {
        let input = syn::parse_quote! {
            #[message(codec = "bincode")]
            pub enum Beat { Ping { seq: u64 }, #[message(tag = 7)] Pong(u64), Stop }
        };
        let items = items(derive_message(&input));
        assert_eq!(impls(&items), ["Message", "TaggedEnum", "Dispatch"]);
        let Some(Item::Trait(handler)) = items.iter().find(|i| matches!(i, Item::Trait(_))) else {
            panic!("a handler trait")
        };
        assert_eq!(handler.ident, "BeatHandler");
        assert!(matches!(handler.vis, syn::Visibility::Public(_)));
        let methods: Vec<_> = handler
            .items
            .iter()
            .map(|item| match item {
                syn::TraitItem::Fn(f) => (f.sig.ident.to_string(), f.sig.inputs.len()),
                _ => panic!("only methods"),
            })
            .collect();
        let expected = [("ping", 3), ("pong", 3), ("stop", 2)].map(|(m, n)| (m.to_string(), n));
        assert_eq!(methods, expected);
        assert!(!has_compile_error(&items));
    }

    #[test]
    fn request_expands_to_request_impl_and_methods_that_return_the_reply() {
        let input = syn::parse_quote! {
            #[message(codec = "bincode", reply = Reply)]
            pub enum Command { Get { key: String }, #[message(deferred)] Slow(u64) }
        };
        let items = items(derive_message(&input));
        assert_eq!(
            impls(&items),
            ["Message", "TaggedEnum", "Request", "Dispatch"]
        );
        let text = quote!(#(#items)*).to_string();
        assert!(text.contains("type Reply = Reply"), "{text}");
        // `get` returns the reply; `slow` gets a replier and returns ().
        assert!(
            text.contains("fn get (& self , key : String , ctx : & mut :: chitchat_net :: Context < '_ >) -> impl :: core :: future :: Future < Output = :: core :: result :: Result < Reply ,"),
            "{text}"
        );
        assert!(
            text.contains(
                "fn slow (& self , _0 : u64 , replier : :: chitchat_net :: Replier , ctx"
            ),
            "{text}"
        );
        assert!(
            text.contains(":: chitchat_net :: Context :: answer (ctx"),
            "{text}"
        );
        assert!(
            text.contains(":: chitchat_net :: Context :: replier (ctx)"),
            "{text}"
        );
    }

    #[test]
    fn tagged_enum_writes_pinned_and_positional_tags() {
        let input = syn::parse_quote! {
            #[message(codec = "bincode")]
            enum Beat { Ping { seq: u64 }, #[message(tag = 7)] Pong(u64), Stop }
        };
        let text = derive_message(&input).to_string();
        assert!(text.contains("Self :: Ping { .. } => 0u32"), "{text}");
        assert!(text.contains("Self :: Pong { .. } => 7u32"), "{text}");
        assert!(text.contains("Self :: Stop { .. } => 2u32"), "{text}");
        assert!(
            text.contains("Tagged < :: chitchat_net :: Bincode >"),
            "{text}"
        );
    }

    #[test]
    fn fingerprint_lists_variants_by_tag_with_fields_as_written() {
        let input = syn::parse_quote! {
            #[message(codec = "bincode")]
            enum Tree { #[message(tag = 9)] Node { left: Box<Self>, r#ref: Vec<u8> }, #[message(tag = 2)] Leaf(u64) }
        };
        let text = derive_message(&input).to_string();
        let leaf = text.find(". variant (2u32)").expect(&text);
        let node = text.find(". variant (9u32)").expect(&text);
        assert!(leaf < node, "{text}");
        assert!(
            text.contains("FingerprintBuilder :: new (\"enum\" , \"Tree\")"),
            "{text}"
        );
        assert!(text.contains(". codec (\"bincode\")"), "{text}");
        assert!(text.contains(". field (\"left\" , \"Box<Tree>\""), "{text}");
        assert!(text.contains(". field (\"ref\" , \"Vec<u8>\""), "{text}");
        assert!(text.contains(". field (\"0\" , \"u64\""), "{text}");
    }

    #[test]
    fn struct_expands_to_message_trait_and_dispatch() {
        let input = syn::parse_quote!(
            #[message(codec = "pod")]
            struct Sample {
                id: u32,
            }
        );
        let items = items(derive_message(&input));
        assert_eq!(impls(&items), ["Message", "Dispatch"]);
        let text = quote!(#(#items)*).to_string();
        assert!(
            text.contains("type Codec = :: chitchat_net :: PodCodec"),
            "{text}"
        );
        assert!(text.contains("fn sample (& self , msg : Sample"), "{text}");
    }

    #[test]
    fn crate_attribute_replaces_every_main_crate_path() {
        let input = syn::parse_quote! {
            #[message(codec = "bincode", crate = "::net")]
            enum Beat { Ping { seq: u64 } }
        };
        let text = derive_message(&input).to_string();
        assert!(!text.contains("chitchat_net"), "{text}");
        assert!(text.contains(":: net :: codec :: TaggedEnum"), "{text}");
    }

    #[test]
    fn invalid_message_gets_error_stub_and_still_its_handler_trait() {
        let input = syn::parse_quote! {
            #[message(codec = "json")]
            enum Beat { Ping { seq: u64 } }
        };
        let items = items(derive_message(&input));
        assert!(has_compile_error(&items));
        assert!(items
            .iter()
            .any(|i| matches!(i, Item::Trait(t) if t.ident == "BeatHandler")));
        // The stub `Message` impl sits in a `const _` block.
        assert!(items.iter().any(|i| matches!(i, Item::Const(_))));
        assert!(impls(&items).contains(&"Dispatch".to_string()));
    }

    #[test]
    fn union_gets_error_stub_and_a_whole_message_handler_trait() {
        let input = syn::parse_quote!(#[message(codec = "pod")] union U { a: u32 });
        let items = items(derive_message(&input));
        assert!(has_compile_error(&items));
        assert!(items
            .iter()
            .any(|i| matches!(i, Item::Trait(t) if t.ident == "UHandler")));
    }

    #[test]
    fn handler_dispatches_to_the_message() {
        let input = syn::parse_quote!(
            #[handler(message = Beat)]
            struct Monitor;
        );
        let items = items(derive_handler(&input));
        assert_eq!(impls(&items), ["Handler"]);
        let text = quote!(#(#items)*).to_string();
        assert!(text.contains("type Message = Beat"), "{text}");
        assert!(
            text.contains(
                "< Beat as :: chitchat_net :: Dispatch < Self > > :: dispatch (msg , self , ctx)"
            ),
            "{text}"
        );
    }

    #[test]
    fn generic_handler_is_bounded_by_dispatch() {
        let input = syn::parse_quote!(
            #[handler(message = Beat)]
            struct Forward<T>(T);
        );
        let text = derive_handler(&input).to_string();
        assert!(
            text.contains("Beat : :: chitchat_net :: Dispatch < Self >"),
            "{text}"
        );
    }

    #[test]
    fn handler_without_message_gets_error_and_stub() {
        let input = syn::parse_quote!(
            struct Monitor;
        );
        let items = items(derive_handler(&input));
        assert!(has_compile_error(&items));
        assert_eq!(impls(&items), ["Handler"]);
    }

    #[test]
    fn snake_case_method_keeps_the_variant_span() {
        let variant: syn::Variant = syn::parse_quote!(HTTPRequest);
        let method = crate::ast::method_name(&variant.ident);
        assert_eq!(method, "http_request");
        assert_eq!(
            format!("{:?}", method.span()),
            format!("{:?}", variant.ident.span())
        );
    }

    #[test]
    fn self_in_field_types_names_the_message_in_the_trait() {
        let ty: Type = syn::parse_quote!(Vec<Box<Self>>);
        let ident: Ident = syn::parse_quote!(Tree);
        assert_eq!(
            replace_self(&ty, &ident).to_string(),
            "Vec < Box < Tree > >"
        );
    }
}
