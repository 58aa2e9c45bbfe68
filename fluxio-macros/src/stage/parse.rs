//! Parses `#[stage(...)]` options.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, LitStr, Token, bracketed};

use crate::symbol::{CRATE, FALLBACK, NAME, READS, ROLLBACK, STAGE_OPTIONS, TIMEOUT, WRITES};

/// A key named in `reads` or `writes`, with the span of the user's token.
#[derive(Clone)]
pub(crate) struct KeyRef(pub(crate) syn::Path);

impl KeyRef {
    /// The key's own name: the last segment of its path.
    pub(crate) fn ident(&self) -> &Ident {
        &self
            .0
            .segments
            .last()
            .expect("a parsed path has a segment")
            .ident
    }
}

/// One option as written, before duplicates are checked.
pub(crate) enum StageOption {
    Reads(Ident, Vec<KeyRef>),
    Writes(Ident, Vec<KeyRef>),
    Timeout(Ident, LitStr),
    Name(Ident, LitStr),
    Crate(Ident, syn::Path),
    Fallback(Ident, syn::Path),
    Rollback(Ident, syn::Path),
}

/// Every option of one `#[stage(...)]`.
pub(crate) struct StageArgs {
    pub(crate) options: Vec<StageOption>,
}

fn key_list(input: ParseStream<'_>, option: &str) -> syn::Result<Vec<KeyRef>> {
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(format!(
            "`{option}` must be a list of keys, e.g. `{option} = [user]`"
        )));
    }
    let content;
    bracketed!(content in input);
    let keys: Punctuated<syn::Path, Token![,]> =
        content.parse_terminated(syn::Path::parse_mod_style, Token![,])?;
    Ok(keys.into_iter().map(KeyRef).collect())
}

impl Parse for StageArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut options = Vec::new();
        while !input.is_empty() {
            let ident: Ident = if input.peek(Token![crate]) {
                let kw: Token![crate] = input.parse()?;
                Ident::new(CRATE, kw.span)
            } else {
                input.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        format!("expected one of {}", quoted(STAGE_OPTIONS)),
                    )
                })?
            };
            let name = ident.to_string();
            if !STAGE_OPTIONS.contains(&name.as_str()) {
                return Err(syn::Error::new(
                    ident.span(),
                    format!(
                        "unknown `#[stage]` option `{name}`; expected one of {}",
                        quoted(STAGE_OPTIONS)
                    ),
                ));
            }
            input
                .parse::<Token![=]>()
                .map_err(|e| syn::Error::new(e.span(), format!("expected `=` after `{name}`")))?;
            let option = match name.as_str() {
                READS => StageOption::Reads(ident, key_list(input, READS)?),
                WRITES => StageOption::Writes(ident, key_list(input, WRITES)?),
                TIMEOUT => StageOption::Timeout(
                    ident,
                    input.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "`timeout` must be a string such as `\"5s\"` or `\"250ms\"`",
                        )
                    })?,
                ),
                NAME => StageOption::Name(
                    ident,
                    input.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "`name` must be a string literal, e.g. `name = \"fetch\"`",
                        )
                    })?,
                ),
                FALLBACK => StageOption::Fallback(
                    ident,
                    input.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "`fallback` names a function: `fallback = use_cached_user`",
                        )
                    })?,
                ),
                ROLLBACK => StageOption::Rollback(
                    ident,
                    input.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "`rollback` names a function: `rollback = refund_payment`",
                        )
                    })?,
                ),
                _ => {
                    let path = if input.peek(LitStr) {
                        input.parse::<LitStr>()?.parse::<syn::Path>()?
                    } else {
                        input.parse::<syn::Path>()?
                    };
                    StageOption::Crate(ident, path)
                }
            };
            options.push(option);
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(StageArgs { options })
    }
}

pub(crate) fn quoted(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a humantime-style duration: `"5s"`, `"250ms"`, `"1m 30s"`, `"2h"`.
pub(crate) fn parse_duration(text: &str, span: Span) -> syn::Result<u128> {
    let err = || {
        syn::Error::new(
            span,
            format!(
                "invalid `timeout` \"{text}\": use a number and a unit (ns, us, ms, s, m, h, d, w), e.g. \"5s\" or \"1m 30s\""
            ),
        )
    };
    let mut total: u128 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err());
        }
        let too_long = || {
            syn::Error::new(
                span,
                format!("invalid `timeout` \"{text}\": too long (at most about 584 years)"),
            )
        };
        let n: u128 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic() && c != 'µ')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let nanos: u128 = match unit {
            // humantime's units (SPEC's timeout format), but for months and years, whose
            // lengths a timeout should not have to guess.
            "ns" | "nsec" | "nanos" => 1,
            "us" | "µs" | "usec" | "micros" => 1_000,
            "ms" | "msec" | "millis" => 1_000_000,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000_000,
            "d" | "day" | "days" => 86_400_000_000_000,
            "w" | "week" | "weeks" => 604_800_000_000_000,
            _ => return Err(err()),
        };
        total = n
            .checked_mul(nanos)
            .and_then(|v| total.checked_add(v))
            .filter(|&t| t <= u64::MAX as u128)
            .ok_or_else(too_long)?;
        rest = rest[unit_len..].trim_start();
    }
    if total == 0 {
        return Err(syn::Error::new(
            span,
            format!(
                "invalid `timeout` \"{text}\": a timeout must be longer than zero (leave `timeout` out for none)"
            ),
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let s = Span::call_site();
        assert_eq!(parse_duration("5s", s).unwrap(), 5_000_000_000);
        assert_eq!(parse_duration("250ms", s).unwrap(), 250_000_000);
        assert_eq!(parse_duration("1d", s).unwrap(), 86_400_000_000_000);
        assert_eq!(
            parse_duration("1 week 2 days", s).unwrap(),
            9 * 86_400_000_000_000
        );
        assert_eq!(
            parse_duration("2 hours 1 minute", s).unwrap(),
            7_260_000_000_000
        );
        assert_eq!(parse_duration("1m 30s", s).unwrap(), 90_000_000_000);
        assert!(parse_duration("5", s).is_err());
        assert!(parse_duration("s", s).is_err());
        assert!(parse_duration("0s", s).is_err());
        assert!(parse_duration("5 parsecs", s).is_err());
    }

    #[test]
    fn options_parse() {
        let args: StageArgs =
            syn::parse_quote!(reads = [a, m::b], writes = [c], timeout = "1s", name = "x");
        assert_eq!(args.options.len(), 4);
        assert!(syn::parse2::<StageArgs>(quote::quote!(bogus = 1)).is_err());
        assert!(syn::parse2::<StageArgs>(quote::quote!(reads = a)).is_err());
    }
}
