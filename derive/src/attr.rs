//! Our helper attributes: `#[message(...)]` and `#[handler(...)]`.
//!
//! Parsing is syntax only: each key at most once, on the item it belongs on,
//! with a value of the right form. Whether the values make sense together
//! (a codec for this shape, distinct tags) is `valid.rs`'s job. Errors are
//! collected rather than returned, so that one bad key does not hide the
//! rest of the input from the later steps.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Error, Ident, LitInt, LitStr, Path, Result, Token, Type};

/// `#[message(...)]` on a type deriving `Message`.
#[derive(Default)]
pub(crate) struct MessageAttrs {
    /// `codec = "name"` or `codec = some::Codec`.
    pub(crate) codec: Option<CodecAttr>,
    /// `crate = "path"`: where the main crate lives.
    pub(crate) krate: Option<Path>,
    /// `handler = "Name"`: the name of the generated handler trait.
    pub(crate) handler: Option<Ident>,
    /// `reply = Type`: the message is a request answered by `Type`.
    pub(crate) reply: Option<Type>,
    /// `deferred` (on a struct): its handler method gets a `Replier` and
    /// answers through it, instead of returning the reply.
    pub(crate) deferred: Option<Span>,
    /// `also_decodes = path::To::Earlier` (repeatable): earlier versions of
    /// the type that it still decodes.
    pub(crate) also_decodes: Vec<Type>,
    /// `stream = Type`: the message is a subscription answered by a
    /// stream of `Type` items.
    pub(crate) stream: Option<Type>,
}

/// The value of `codec = ...`.
pub(crate) enum CodecAttr {
    /// A string naming a built-in codec.
    Builtin(Builtin, LitStr),
    /// A string naming no codec we know (an error, reported by `valid.rs`).
    Unknown(LitStr),
    /// Not a string: the user's own codec type.
    Type(Box<Type>),
}

/// The codecs that `codec = "..."` names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Builtin {
    Bincode,
    Postcard,
    Pod,
}

impl Builtin {
    pub(crate) const ALL: [Builtin; 3] = [Builtin::Bincode, Builtin::Postcard, Builtin::Pod];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Builtin::Bincode => "bincode",
            Builtin::Postcard => "postcard",
            Builtin::Pod => "pod",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl CodecAttr {
    /// Where errors about the codec point: the value as written.
    pub(crate) fn span(&self) -> Span {
        match self {
            CodecAttr::Builtin(_, lit) | CodecAttr::Unknown(lit) => lit.span(),
            CodecAttr::Type(ty) => ty.span(),
        }
    }
}

/// `#[message(...)]` on an enum variant.
#[derive(Default)]
pub(crate) struct VariantAttrs {
    /// `tag = N`.
    pub(crate) tag: Option<TagAttr>,
    /// `deferred`: the variant's handler method gets a `Replier` and
    /// answers through it, instead of returning the reply.
    pub(crate) deferred: Option<Span>,
    /// `stream`: the variant is answered by a reply stream (of the enum's
    /// `stream = Type`), its method gets a `ReplySink`.
    pub(crate) stream: Option<Span>,
}

/// A pinned wire tag.
pub(crate) struct TagAttr {
    pub(crate) value: u32,
    /// The literal, where errors about this tag point.
    pub(crate) span: Span,
}

/// `#[handler(...)]` on a type deriving `Handler`.
#[derive(Default)]
pub(crate) struct HandlerAttrs {
    /// `message = Type`.
    pub(crate) message: Option<Type>,
    /// `crate = "path"`.
    pub(crate) krate: Option<Path>,
    /// `on_open = path::to::fn`: called as `fn(&self, &mut Context)`.
    pub(crate) on_open: Option<Path>,
    /// `on_close = path::to::fn`: called as `fn(&self, Closed)`.
    pub(crate) on_close: Option<Path>,
}

const CODEC_HELP: &str = "expected `codec = \"bincode\"`, `codec = \"postcard\"`, \
                          `codec = \"pod\"` or `codec = path::To::YourCodec`";

/// Reads every `#[message(...)]` on the type itself.
pub(crate) fn message_attrs(attrs: &[Attribute], errors: &mut Vec<Error>) -> MessageAttrs {
    let mut out = MessageAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("message")) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("codec") {
                let value = meta.value()?;
                let codec = if value.peek(LitStr) {
                    let lit: LitStr = value.parse()?;
                    match Builtin::from_name(&lit.value()) {
                        Some(builtin) => CodecAttr::Builtin(builtin, lit),
                        None => CodecAttr::Unknown(lit),
                    }
                } else {
                    CodecAttr::Type(
                        value
                            .parse()
                            .map_err(|e| Error::new(e.span(), format_args!("{CODEC_HELP}")))?,
                    )
                };
                set_once(&mut out.codec, codec, &meta)
            } else if meta.path.is_ident("crate") {
                let path = parse_path_value(&meta)?;
                set_once(&mut out.krate, path, &meta)
            } else if meta.path.is_ident("handler") {
                let name = parse_ident_value(&meta)?;
                set_once(&mut out.handler, name, &meta)
            } else if meta.path.is_ident("reply") {
                let ty: Type = meta.value()?.parse()?;
                set_once(&mut out.reply, ty, &meta)
            } else if meta.path.is_ident("deferred") {
                set_once(&mut out.deferred, meta.path.span(), &meta)
            } else if meta.path.is_ident("also_decodes") {
                let value = meta.value()?;
                if value.peek(LitStr) {
                    return Err(value.error(
                        "expected the earlier version's type, such as `also_decodes = v1::Command` \
                         (keep its definition in a module), not a string",
                    ));
                }
                out.also_decodes.push(value.parse()?);
                Ok(())
            } else if meta.path.is_ident("stream") {
                let ty: Type = meta.value()?.parse()?;
                set_once(&mut out.stream, ty, &meta)
            } else if meta.path.is_ident("tag") {
                Err(meta.error(
                    "`tag` belongs on an enum variant: `#[message(tag = N)]` above the variant",
                ))
            } else {
                Err(meta.error(
                    "unknown `message` attribute: expected `codec`, `reply`, `stream`, `deferred`, `also_decodes`, `crate` or `handler`",
                ))
            }
        });
        errors.extend(parsed.err());
    }
    out
}

/// Reads every `#[message(...)]` on an enum variant.
pub(crate) fn variant_attrs(attrs: &[Attribute], errors: &mut Vec<Error>) -> VariantAttrs {
    let mut out = VariantAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("message")) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("tag") {
                let lit: LitInt = meta.value()?.parse()?;
                let value = lit.base10_parse::<u32>().map_err(|_| {
                    Error::new(
                        lit.span(),
                        "expected a tag between 0 and 4294967295 (a u32)",
                    )
                })?;
                let tag = TagAttr {
                    value,
                    span: lit.span(),
                };
                set_once(&mut out.tag, tag, &meta)
            } else if meta.path.is_ident("deferred") {
                set_once(&mut out.deferred, meta.path.span(), &meta)
            } else if meta.path.is_ident("stream") && meta.input.peek(Token![=]) {
                Err(meta.error(
                    "`stream = Item` belongs on the enum; mark a variant answered by a stream with `#[message(stream)]`",
                ))
            } else if meta.path.is_ident("stream") {
                set_once(&mut out.stream, meta.path.span(), &meta)
            } else if ["codec", "crate", "handler", "reply", "also_decodes"]
                .iter()
                .any(|key| meta.path.is_ident(key))
            {
                Err(meta.error(format_args!(
                    "`{}` belongs on the enum, not on a variant",
                    path_name(&meta.path)
                )))
            } else {
                Err(meta.error(
                    "unknown `message` attribute on a variant: expected `tag = N`, `deferred` or `stream`",
                ))
            }
        });
        errors.extend(parsed.err());
    }
    out
}

/// Reads every `#[handler(...)]` on the type itself.
pub(crate) fn handler_attrs(attrs: &[Attribute], errors: &mut Vec<Error>) -> HandlerAttrs {
    let mut out = HandlerAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("handler")) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("message") {
                let ty: Type = meta.value()?.parse()?;
                set_once(&mut out.message, ty, &meta)
            } else if meta.path.is_ident("crate") {
                let path = parse_path_value(&meta)?;
                set_once(&mut out.krate, path, &meta)
            } else if meta.path.is_ident("on_open") {
                let path = parse_path_value(&meta)?;
                set_once(&mut out.on_open, path, &meta)
            } else if meta.path.is_ident("on_close") {
                let path = parse_path_value(&meta)?;
                set_once(&mut out.on_close, path, &meta)
            } else {
                Err(meta.error(
                    "unknown `handler` attribute: expected `message`, `on_open`, `on_close` or `crate`",
                ))
            }
        });
        errors.extend(parsed.err());
    }
    out
}

/// Rejects our attribute `name` on a place it does not belong (a field).
pub(crate) fn reject(attrs: &[Attribute], name: &str, place: &str, errors: &mut Vec<Error>) {
    for attr in attrs.iter().filter(|a| a.path().is_ident(name)) {
        errors.push(Error::new(
            attr.span(),
            format_args!("`#[{name}]` is not allowed on {place}: it belongs on the type"),
        ));
    }
}

/// Stores `value` unless the key was already given, which is an error on the
/// second occurrence.
fn set_once<T>(slot: &mut Option<T>, value: T, meta: &ParseNestedMeta<'_>) -> Result<()> {
    if slot.is_some() {
        return Err(meta.error(format_args!(
            "duplicate `{}` attribute",
            path_name(&meta.path)
        )));
    }
    *slot = Some(value);
    Ok(())
}

/// `key = "some::path"` or `key = some::path`.
fn parse_path_value(meta: &ParseNestedMeta<'_>) -> Result<Path> {
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        lit.parse_with(Path::parse_mod_style)
            .map_err(|_| Error::new(lit.span(), "expected a path, such as \"::chitchat_net\""))
    } else {
        value.call(Path::parse_mod_style)
    }
}

/// `key = "Name"` or `key = Name`.
fn parse_ident_value(meta: &ParseNestedMeta<'_>) -> Result<Ident> {
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        // The parsed identifier carries the literal's span.
        lit.parse::<Ident>().map_err(|_| {
            Error::new(
                lit.span(),
                "expected an identifier, such as \"BeatHandler\"",
            )
        })
    } else if value.peek(Token![::]) || value.peek2(Token![::]) {
        Err(value.error("expected a single identifier, not a path"))
    } else {
        value.parse()
    }
}

/// The key's name for messages (`crate` included, which is a keyword).
fn path_name(path: &Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::DeriveInput;

    fn message_errors(input: DeriveInput) -> Vec<String> {
        let mut errors = Vec::new();
        message_attrs(&input.attrs, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn codec_string_names_a_builtin_or_nothing_known() {
        let input: DeriveInput = syn::parse_quote! {
            #[message(codec = "postcard", crate = "::net", handler = "Beats")]
            struct S;
        };
        let mut errors = Vec::new();
        let attrs = message_attrs(&input.attrs, &mut errors);
        assert!(errors.is_empty());
        assert!(matches!(
            attrs.codec,
            Some(CodecAttr::Builtin(Builtin::Postcard, _))
        ));
        assert_eq!(attrs.handler.unwrap(), "Beats");
        let krate = attrs.krate.unwrap();
        assert_eq!(quote::quote!(#krate).to_string(), ":: net");

        let input: DeriveInput = syn::parse_quote!(
            #[message(codec = "json")]
            struct S;
        );
        let attrs = message_attrs(&input.attrs, &mut errors);
        assert!(matches!(attrs.codec, Some(CodecAttr::Unknown(_))));
    }

    #[test]
    fn codec_path_is_a_type_with_generics() {
        let input: DeriveInput = syn::parse_quote! {
            #[message(codec = my::Codec<4>, handler = Beats)]
            struct S;
        };
        let mut errors = Vec::new();
        let attrs = message_attrs(&input.attrs, &mut errors);
        assert!(errors.is_empty());
        let Some(CodecAttr::Type(ty)) = attrs.codec else {
            panic!("a type path")
        };
        assert_eq!(quote::quote!(#ty).to_string(), "my :: Codec < 4 >");
    }

    #[test]
    fn duplicate_key_is_an_error_even_across_attributes() {
        let input: DeriveInput = syn::parse_quote! {
            #[message(codec = "bincode")]
            #[message(codec = "pod")]
            struct S;
        };
        assert_eq!(message_errors(input), ["duplicate `codec` attribute"]);
    }

    #[test]
    fn misplaced_and_unknown_keys_are_errors() {
        let input: DeriveInput = syn::parse_quote!(
            #[message(codec = "bincode", tag = 1)]
            struct S;
        );
        let errors = message_errors(input);
        assert!(errors[0].starts_with("`tag` belongs on an enum variant"));

        let input: DeriveInput = syn::parse_quote!(
            #[message(codex = "bincode")]
            struct S;
        );
        let errors = message_errors(input);
        assert!(errors[0].starts_with("unknown `message` attribute"));

        let variant: syn::Variant = syn::parse_quote!(
            #[message(codec = "pod")]
            V
        );
        let mut errors = Vec::new();
        variant_attrs(&variant.attrs, &mut errors);
        assert_eq!(
            errors[0].to_string(),
            "`codec` belongs on the enum, not on a variant"
        );
    }

    #[test]
    fn reply_takes_a_type_and_deferred_is_a_flag() {
        let input: DeriveInput = syn::parse_quote! {
            #[message(codec = "bincode", reply = proto::Reply<u8>, deferred)]
            struct S;
        };
        let mut errors = Vec::new();
        let attrs = message_attrs(&input.attrs, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let reply = attrs.reply.unwrap();
        assert_eq!(quote::quote!(#reply).to_string(), "proto :: Reply < u8 >");
        assert!(attrs.deferred.is_some());

        let variant: syn::Variant = syn::parse_quote!(
            #[message(tag = 2, deferred)]
            V
        );
        let attrs = variant_attrs(&variant.attrs, &mut errors);
        assert!(errors.is_empty());
        assert!(attrs.deferred.is_some());

        let variant: syn::Variant = syn::parse_quote!(
            #[message(reply = R)]
            V
        );
        variant_attrs(&variant.attrs, &mut errors);
        assert_eq!(
            errors[0].to_string(),
            "`reply` belongs on the enum, not on a variant"
        );
    }

    #[test]
    fn also_decodes_takes_types_and_repeats() {
        let input: DeriveInput = syn::parse_quote! {
            #[message(codec = "bincode", also_decodes = v1::Command)]
            #[message(also_decodes = v0::Command)]
            struct S;
        };
        let mut errors = Vec::new();
        let attrs = message_attrs(&input.attrs, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let earlier: Vec<String> = attrs
            .also_decodes
            .iter()
            .map(|ty| quote::quote!(#ty).to_string())
            .collect();
        assert_eq!(earlier, ["v1 :: Command", "v0 :: Command"]);

        let input: DeriveInput = syn::parse_quote! {
            #[message(codec = "bincode", also_decodes = "0123456789abcdef")]
            struct S;
        };
        assert!(message_errors(input)[0].starts_with("expected the earlier version's type"));
    }

    #[test]
    fn tag_must_be_a_u32() {
        let variant: syn::Variant = syn::parse_quote!(
            #[message(tag = 7)]
            V
        );
        let mut errors = Vec::new();
        let attrs = variant_attrs(&variant.attrs, &mut errors);
        assert_eq!(attrs.tag.unwrap().value, 7);

        let variant: syn::Variant = syn::parse_quote!(
            #[message(tag = 4294967296)]
            V
        );
        variant_attrs(&variant.attrs, &mut errors);
        assert!(errors[0]
            .to_string()
            .starts_with("expected a tag between 0 and 4294967295"));
    }

    #[test]
    fn handler_attrs_take_a_message_type() {
        let input: DeriveInput = syn::parse_quote! {
            #[handler(message = proto::Beat, crate = "crate::net")]
            struct H;
        };
        let mut errors = Vec::new();
        let attrs = handler_attrs(&input.attrs, &mut errors);
        assert!(errors.is_empty());
        assert!(attrs.message.is_some() && attrs.krate.is_some());

        let input: DeriveInput = syn::parse_quote!(
            #[handler(messages = Beat)]
            struct H;
        );
        handler_attrs(&input.attrs, &mut errors);
        assert_eq!(
            errors[0].to_string(),
            "unknown `handler` attribute: expected `message`, `on_open`, `on_close` or `crate`"
        );
    }
}
