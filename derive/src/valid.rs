//! Every semantic check: does the codec suit the type's shape, are the
//! tags distinct, can the handler trait be generated.
//!
//! Checks push onto the input's `errors` and carry on, so that the user sees
//! every mistake of one input at once.

use std::collections::HashMap;

use syn::{Error, Type};

use crate::ast::{Handler, Message, Shape, Variant};
use crate::attr::{Builtin, CodecAttr};

impl Message<'_> {
    pub(crate) fn validate(&mut self) {
        let mut errors = Vec::new();
        self.check_generics(&mut errors);
        let mut handler_ok = errors.is_empty();
        self.check_codec(&mut errors);
        let before = errors.len();
        self.check_deferred(&mut errors);
        self.check_stream(&mut errors);
        handler_ok &= errors.len() == before;
        if let Shape::Enum(variants) = &self.shape {
            if self.tags_apply(variants, &mut errors) {
                check_distinct_tags(variants, &mut errors);
            }
            let before = errors.len();
            check_distinct_methods(variants, &mut errors);
            handler_ok &= errors.len() == before;
        }
        self.handler_ok = handler_ok;
        self.errors.extend(errors);
    }

    fn check_generics(&self, errors: &mut Vec<Error>) {
        let generics = &self.original.generics;
        if !generics.params.is_empty() {
            errors.push(Error::new_spanned(
                generics,
                "Message cannot be derived for a generic type: implement \
                 `chitchat_net::Message` by hand, or derive it for a concrete wrapper",
            ));
        }
    }

    /// `deferred` answers a request through a `Replier`: it needs `reply`,
    /// and on an enum it belongs on the variants it applies to.
    fn check_deferred(&self, errors: &mut Vec<Error>) {
        let has_reply = self.attrs.reply.is_some();
        if let Some(span) = self.attrs.deferred {
            if let Shape::Enum(_) = self.shape {
                errors.push(Error::new(
                    span,
                    "`deferred` on an enum belongs on the variants answered later: \
                     `#[message(deferred)]` above each",
                ));
            } else if !has_reply {
                errors.push(Error::new(
                    span,
                    "`deferred` answers a request later: declare its reply type with \
                     `#[message(reply = YourReply)]` too",
                ));
            }
        }
        if let (Shape::Enum(variants), false) = (&self.shape, has_reply) {
            for variant in variants {
                if let Some(span) = variant.attrs.deferred {
                    errors.push(Error::new(
                        span,
                        "`deferred` answers a request later: declare the enum's reply type \
                         with `#[message(reply = YourReply)]`",
                    ));
                }
            }
        }
    }

    /// `stream = Item` makes a subscription: a struct is a request or a
    /// subscription, not both; a variant marked `stream` needs the enum's
    /// `stream = Item`, and is not `deferred` too.
    fn check_stream(&self, errors: &mut Vec<Error>) {
        let has_stream = self.attrs.stream.is_some();
        if let (Some(ty), Shape::Struct { .. }, true) = (
            &self.attrs.stream,
            &self.shape,
            self.attrs.reply.is_some() || self.attrs.deferred.is_some(),
        ) {
            errors.push(Error::new_spanned(
                ty,
                "a struct is answered by one reply (`reply`) or by a stream (`stream`), not both",
            ));
        }
        if let Shape::Enum(variants) = &self.shape {
            for variant in variants {
                let Some(span) = variant.attrs.stream else {
                    continue;
                };
                if !has_stream {
                    errors.push(Error::new(
                        span,
                        "a variant answered by a stream needs the enum's item type: \
                         `#[message(stream = YourItem)]` on the enum",
                    ));
                } else if variant.attrs.deferred.is_some() {
                    errors.push(Error::new(
                        span,
                        "a variant is answered later (`deferred`) or by a stream (`stream`), not both",
                    ));
                }
            }
        }
    }

    fn check_codec(&self, errors: &mut Vec<Error>) {
        let ident = &self.original.ident;
        match &self.attrs.codec {
            None => errors.push(Error::new(
                ident.span(),
                format_args!(
                    "missing codec: add `#[message(codec = \"bincode\")]` above `{ident}` \
                     (or \"postcard\", \"pod\", or a path to your codec type)"
                ),
            )),
            Some(CodecAttr::Unknown(lit)) => errors.push(Error::new(
                lit.span(),
                format_args!(
                    "unknown codec \"{}\": expected \"bincode\", \"postcard\" or \"pod\", \
                     or a path to your own codec type without quotes (`codec = my::Codec`)",
                    lit.value()
                ),
            )),
            Some(CodecAttr::Type(ty)) => {
                if let Some(builtin) = builtin_written_as_path(ty) {
                    errors.push(Error::new_spanned(
                        ty,
                        format_args!(
                            "built-in codecs are named by a string: write `codec = \"{}\"`",
                            builtin.name()
                        ),
                    ));
                }
            }
            Some(CodecAttr::Builtin(Builtin::Pod, lit)) => {
                if let Shape::Enum(_) = self.shape {
                    errors.push(Error::new(
                        lit.span(),
                        "the \"pod\" codec is for structs: an enum has no fixed layout of \
                         plain bytes; use \"bincode\" or \"postcard\", which give each \
                         variant a tag",
                    ));
                }
            }
            Some(CodecAttr::Builtin(..)) => {}
        }
    }

    /// Whether `#[message(tag = N)]` means anything with this codec; an
    /// error on each pinned tag if not. Where the codec is already an error
    /// (missing, unknown, "pod" on an enum) tags are checked as if they
    /// applied.
    fn tags_apply(&self, variants: &[Variant<'_>], errors: &mut Vec<Error>) -> bool {
        let Some(CodecAttr::Type(_)) = self.attrs.codec else {
            return true;
        };
        let pinned = variants.iter().filter_map(|v| v.attrs.tag.as_ref());
        let mut applies = true;
        for tag in pinned {
            applies = false;
            errors.push(Error::new(
                tag.span,
                "`tag` only applies to the \"bincode\" and \"postcard\" codecs, which write \
                 a tag before the fields; with `codec = path` your codec encodes the whole \
                 enum itself",
            ));
        }
        applies
    }
}

impl Handler<'_> {
    pub(crate) fn validate(&mut self) {
        if self.attrs.message.is_none() {
            let ident = &self.original.ident;
            self.errors.push(Error::new(
                ident.span(),
                format_args!(
                    "missing message type: add `#[handler(message = YourMessage)]` above \
                     `{ident}`, naming a type that derives `Message`"
                ),
            ));
        }
    }
}

/// Two variants with one tag could not be told apart on the wire. The
/// error points at the later one: at its `tag = N` if pinned, else at its
/// name (its position gave it the tag).
fn check_distinct_tags(variants: &[Variant<'_>], errors: &mut Vec<Error>) {
    let mut seen = HashMap::new();
    for variant in variants {
        let tag = variant.tag;
        let Some(first) = seen.get(&tag) else {
            seen.insert(tag, &variant.original.ident);
            continue;
        };
        let error = match &variant.attrs.tag {
            Some(pinned) => Error::new(
                pinned.span,
                format_args!("duplicate tag {tag}: variant `{first}` already has it"),
            ),
            None => Error::new(
                variant.original.ident.span(),
                format_args!(
                    "duplicate tag {tag}: this variant's position gives it tag {tag}, which \
                     variant `{first}` already has; pin a free tag with `#[message(tag = N)]`"
                ),
            ),
        };
        errors.push(error);
    }
}

/// `FooBar` and `Foo_Bar` would both get the method `foo_bar`.
fn check_distinct_methods(variants: &[Variant<'_>], errors: &mut Vec<Error>) {
    let mut seen = HashMap::new();
    for variant in variants {
        let method = variant.method.to_string();
        if let Some(first) = seen.get(&method) {
            errors.push(Error::new(
                variant.original.ident.span(),
                format_args!(
                    "variant `{}` would get the handler method `{method}`, which variant \
                     `{first}` already has: rename one of them",
                    variant.original.ident
                ),
            ));
        } else {
            seen.insert(method, &variant.original.ident);
        }
    }
}

/// `codec = bincode` (without quotes) is a slip for `codec = "bincode"`.
fn builtin_written_as_path(ty: &Type) -> Option<Builtin> {
    let Type::Path(path) = ty else { return None };
    let ident = path.path.get_ident()?.to_string();
    Builtin::ALL.into_iter().find(|b| b.name() == ident)
}

#[cfg(test)]
mod tests {
    use syn::DeriveInput;

    use crate::ast::{Handler, Message};

    /// Every error `Message` reports for `input`, attributes and checks.
    fn errors(input: DeriveInput) -> Vec<String> {
        let mut message = Message::from_syn(&input);
        message.validate();
        message.errors.iter().map(ToString::to_string).collect()
    }

    fn assert_one_error(input: DeriveInput, starts_with: &str) {
        let errors = errors(input);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(starts_with), "{errors:?}");
    }

    #[test]
    fn valid_inputs_have_no_errors() {
        let inputs: [DeriveInput; 5] = [
            syn::parse_quote!(
                #[message(codec = "pod")]
                struct S {
                    a: u32,
                }
            ),
            syn::parse_quote!(
                #[message(codec = "bincode")]
                struct S(String);
            ),
            syn::parse_quote!(
                #[message(codec = "bincode")]
                enum E {
                    A,
                    #[message(tag = 9)]
                    B,
                }
            ),
            syn::parse_quote!(
                #[message(codec = "postcard")]
                enum E {
                    #[message(tag = 5)]
                    A,
                    B {},
                }
            ),
            syn::parse_quote!(
                #[message(codec = my::Codec)]
                enum E {
                    A(u8),
                    B,
                }
            ),
        ];
        for input in inputs {
            assert_eq!(errors(input), Vec::<String>::new());
        }
    }

    #[test]
    fn missing_codec() {
        assert_one_error(
            syn::parse_quote!(
                struct S;
            ),
            "missing codec",
        );
    }

    #[test]
    fn unknown_codec() {
        let input = syn::parse_quote!(
            #[message(codec = "json")]
            struct S;
        );
        assert_one_error(input, "unknown codec \"json\"");
    }

    #[test]
    fn builtin_codec_without_quotes() {
        let input = syn::parse_quote!(
            #[message(codec = pod)]
            struct S;
        );
        assert_one_error(input, "built-in codecs are named by a string");
    }

    #[test]
    fn pod_on_enum() {
        let input = syn::parse_quote!(
            #[message(codec = "pod")]
            enum E {
                A,
            }
        );
        assert_one_error(input, "the \"pod\" codec is for structs");
    }

    #[test]
    fn generic_type() {
        let input = syn::parse_quote!(
            #[message(codec = "bincode")]
            struct S<T>(T);
        );
        assert_one_error(input, "Message cannot be derived for a generic type");
    }

    #[test]
    fn duplicate_pinned_tag() {
        let input = syn::parse_quote! {
            #[message(codec = "bincode")]
            enum E { #[message(tag = 3)] A, #[message(tag = 3)] B }
        };
        assert_one_error(input, "duplicate tag 3: variant `A` already has it");
    }

    #[test]
    fn pinned_tag_clashing_with_a_position() {
        // `A` keeps position 0; `B` pins 0 too: the error is on `B`.
        let input = syn::parse_quote! {
            #[message(codec = "bincode")]
            enum E { A, #[message(tag = 0)] B }
        };
        assert_one_error(input, "duplicate tag 0: variant `A` already has it");
        // `A` pins 1; `B` gets 1 from its position.
        let input = syn::parse_quote! {
            #[message(codec = "bincode")]
            enum E { #[message(tag = 1)] A, B }
        };
        assert_one_error(
            input,
            "duplicate tag 1: this variant's position gives it tag 1",
        );
    }

    #[test]
    fn tag_with_own_codec() {
        let input = syn::parse_quote! {
            #[message(codec = my::Codec)]
            enum E { #[message(tag = 3)] A, B }
        };
        assert_one_error(
            input,
            "`tag` only applies to the \"bincode\" and \"postcard\"",
        );
    }

    #[test]
    fn clashing_method_names() {
        let input = syn::parse_quote! {
            #[message(codec = "bincode")]
            enum E { FooBar, Foo_Bar }
        };
        assert_one_error(
            input,
            "variant `Foo_Bar` would get the handler method `foo_bar`",
        );
    }

    #[test]
    fn attribute_on_a_field() {
        let input = syn::parse_quote! {
            #[message(codec = "bincode")]
            enum E { A { #[message(tag = 1)] x: u8 } }
        };
        assert_one_error(input, "`#[message]` is not allowed on a field");
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let input = syn::parse_quote! {
            #[message(codec = "json")]
            enum E { #[message(tag = 1)] A, #[message(tag = 1)] B, #[message(codec = "pod")] C }
        };
        assert_eq!(errors(input).len(), 3);
    }

    #[test]
    fn deferred_needs_a_reply_and_belongs_on_variants() {
        let input = syn::parse_quote! {
            #[message(codec = "bincode")]
            enum E { #[message(deferred)] A, B }
        };
        assert_one_error(input, "`deferred` answers a request later");
        let input = syn::parse_quote! {
            #[message(codec = "bincode", reply = R, deferred)]
            enum E { A, B }
        };
        assert_one_error(input, "`deferred` on an enum belongs on the variants");
        let input = syn::parse_quote! {
            #[message(codec = "bincode", deferred)]
            struct S;
        };
        assert_one_error(input, "`deferred` answers a request later");
        let input = syn::parse_quote! {
            #[message(codec = "bincode", reply = R)]
            enum E { #[message(deferred)] A, B }
        };
        assert_eq!(errors(input), Vec::<String>::new());
    }

    #[test]
    fn handler_needs_a_message() {
        let input: DeriveInput = syn::parse_quote!(
            struct H;
        );
        let mut handler = Handler::from_syn(&input);
        handler.validate();
        let errors: Vec<_> = handler.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("missing message type"));
    }
}
