//! A typed view of the input that keeps references to the original syntax.
//!
//! Building the view never fails: errors (attributes, a union) are
//! collected in `errors` and the view is built anyway, so that the fallback
//! can still emit the handler trait and spare the user a cascade of "cannot
//! find trait" errors.

use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Error, Ident, Path, Type};

use crate::attr::{self, HandlerAttrs, MessageAttrs, VariantAttrs};

/// A type deriving `Message`.
pub(crate) struct Message<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: MessageAttrs,
    pub(crate) shape: Shape<'a>,
    /// Where the main crate lives: `crate = "..."` or `::chitchat_net`.
    pub(crate) krate: Path,
    /// The generated handler trait: `handler = "..."` or `<Type>Handler`,
    /// spanned at the attribute or the type's name.
    pub(crate) handler_trait: Ident,
    /// Whether the handler trait can be generated even if other checks
    /// fail (not for a generic type or clashing method names).
    pub(crate) handler_ok: bool,
    /// Attribute errors, reported together with `valid.rs`'s.
    pub(crate) errors: Vec<Error>,
}

/// A message is a struct (handled whole) or an enum (handled per variant).
pub(crate) enum Shape<'a> {
    Struct {
        /// The handler trait's one method: the type's name in snake case.
        method: Ident,
    },
    Enum(Vec<Variant<'a>>),
}

/// One variant of an enum message.
pub(crate) struct Variant<'a> {
    pub(crate) original: &'a syn::Variant,
    pub(crate) attrs: VariantAttrs,
    pub(crate) fields: Vec<Field<'a>>,
    /// Its handler method: the variant's name in snake case, spanned at it.
    pub(crate) method: Ident,
    /// Its wire tag: the pinned one, or else the declaration index.
    pub(crate) tag: u32,
}

/// One field of an enum variant.
pub(crate) struct Field<'a> {
    pub(crate) original: &'a syn::Field,
    /// The handler method's parameter: the field's name, or `_0`, `_1`, …
    /// in a tuple variant.
    pub(crate) param: Ident,
    pub(crate) ty: &'a Type,
}

/// A type deriving `Handler`.
pub(crate) struct Handler<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: HandlerAttrs,
    /// Where the main crate lives: `crate = "..."` or `::chitchat_net`.
    pub(crate) krate: Path,
    /// Attribute errors, reported together with `valid.rs`'s.
    pub(crate) errors: Vec<Error>,
}

impl<'a> Message<'a> {
    pub(crate) fn from_syn(node: &'a DeriveInput) -> Self {
        let mut errors = Vec::new();
        let attrs = attr::message_attrs(&node.attrs, &mut errors);
        let shape = match &node.data {
            Data::Struct(data) => {
                for field in &data.fields {
                    attr::reject(&field.attrs, "message", "a field", &mut errors);
                }
                Shape::Struct {
                    method: method_name(&node.ident),
                }
            }
            Data::Enum(data) => {
                let variants = data.variants.iter().enumerate();
                let variants =
                    variants.map(|(index, variant)| Variant::from_syn(variant, index, &mut errors));
                Shape::Enum(variants.collect())
            }
            // Refused, but handled whole like a struct by the fallback.
            Data::Union(data) => {
                errors.push(Error::new(
                    data.union_token.span,
                    "Message cannot be derived for a union: use a struct or an enum",
                ));
                Shape::Struct {
                    method: method_name(&node.ident),
                }
            }
        };
        let krate = attrs.krate.clone().unwrap_or_else(default_crate);
        let handler_trait = match &attrs.handler {
            Some(name) => name.clone(),
            None => Ident::new(&format!("{}Handler", node.ident), node.ident.span()),
        };
        Message {
            original: node,
            attrs,
            shape,
            krate,
            handler_trait,
            handler_ok: true,
            errors,
        }
    }
}

impl<'a> Variant<'a> {
    fn from_syn(node: &'a syn::Variant, index: usize, errors: &mut Vec<Error>) -> Self {
        let attrs = attr::variant_attrs(&node.attrs, errors);
        let fields = node.fields.iter().enumerate().map(|(i, field)| {
            attr::reject(&field.attrs, "message", "a field", errors);
            let param = match &field.ident {
                Some(ident) => ident.clone(),
                None => Ident::new(&format!("_{i}"), field.ty.span()),
            };
            Field {
                original: field,
                param,
                ty: &field.ty,
            }
        });
        let fields = fields.collect();
        // An enum has far fewer than 2^32 variants: rustc itself refuses
        // that many long before.
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let tag = attrs.tag.as_ref().map_or(index, |tag| tag.value);
        Variant {
            original: node,
            attrs,
            fields,
            method: method_name(&node.ident),
            tag,
        }
    }
}

impl<'a> Handler<'a> {
    pub(crate) fn from_syn(node: &'a DeriveInput) -> Self {
        let mut errors = Vec::new();
        let attrs = attr::handler_attrs(&node.attrs, &mut errors);
        match &node.data {
            Data::Struct(data) => {
                for field in &data.fields {
                    attr::reject(&field.attrs, "handler", "a field", &mut errors);
                }
            }
            Data::Enum(data) => {
                for variant in &data.variants {
                    attr::reject(&variant.attrs, "handler", "a variant", &mut errors);
                    for field in &variant.fields {
                        attr::reject(&field.attrs, "handler", "a field", &mut errors);
                    }
                }
            }
            // Still a handler impl in the fallback, for the message given.
            Data::Union(data) => errors.push(Error::new(
                data.union_token.span,
                "Handler cannot be derived for a union: use a struct or an enum",
            )),
        }
        let krate = attrs.krate.clone().unwrap_or_else(default_crate);
        Handler {
            original: node,
            attrs,
            krate,
            errors,
        }
    }
}

fn default_crate() -> Path {
    syn::parse_quote!(::chitchat_net)
}

/// The handler method for a variant or struct named `ident`: `Ping` →
/// `ping`, `HTTPRequest` → `http_request`, spanned at `ident` so that
/// "method not implemented" errors can point back at the variant.
///
/// A name that is a keyword becomes a raw identifier (`Type` → `r#type`),
/// except the four that cannot be raw (`Crate` → `crate_`, and so on).
pub(crate) fn method_name(ident: &Ident) -> Ident {
    let name = snake_case(&ident.to_string());
    let span = ident.span();
    if syn::parse_str::<Ident>(&name).is_ok() {
        Ident::new(&name, span)
    } else if matches!(name.as_str(), "crate" | "self" | "super" | "_") {
        Ident::new(&format!("{name}_"), span)
    } else {
        Ident::new_raw(&name, span)
    }
}

/// `CamelCase` to `snake_case`. A word starts at an uppercase letter that
/// follows a lowercase letter or digit, or that begins a new word after an
/// acronym (the `R` of `HTTPRequest`).
pub(crate) fn snake_case(name: &str) -> String {
    let name = name.strip_prefix("r#").unwrap_or(name);
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1).copied();
            let after_lower = prev.is_some_and(|p| p.is_lowercase() || p.is_numeric());
            let ends_acronym =
                prev.is_some_and(char::is_uppercase) && next.is_some_and(char::is_lowercase);
            if after_lower || ends_acronym {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proc_macro2::Span;

    use super::*;

    #[test]
    fn snake_case_splits_words_and_acronyms() {
        assert_eq!(snake_case("Ping"), "ping");
        assert_eq!(snake_case("PingPong"), "ping_pong");
        assert_eq!(snake_case("HTTPRequest"), "http_request");
        assert_eq!(snake_case("GetHTTP"), "get_http");
        assert_eq!(snake_case("Point3D"), "point3_d");
        assert_eq!(snake_case("V2"), "v2");
        assert_eq!(snake_case("Already_Snake"), "already_snake");
        assert_eq!(snake_case("A"), "a");
    }

    #[test]
    fn keyword_method_names_stay_valid_identifiers() {
        let span = Span::call_site();
        assert_eq!(method_name(&Ident::new("Type", span)), "r#type");
        assert_eq!(method_name(&Ident::new("Crate", span)), "crate_");
        assert_eq!(method_name(&Ident::new("Loop", span)), "r#loop");
        assert_eq!(method_name(&Ident::new("Start", span)), "start");
    }

    #[test]
    fn union_is_rejected_at_the_union_keyword() {
        let input: DeriveInput = syn::parse_quote! {
            #[message(codec = "bincode")]
            union U { a: u32 }
        };
        let errors = Message::from_syn(&input).errors;
        assert_eq!(
            errors[0].to_string(),
            "Message cannot be derived for a union: use a struct or an enum"
        );
        assert_eq!(Handler::from_syn(&input).errors.len(), 1);
    }
}
