//! The types of settings, which validate while they parse.
//!
//! A setting's type implements `FromStr` with an [`Invalid`] error and is parsed by clap with
//! [`Parse`], so that a bad value (from a flag, the environment or the file, see
//! [`crate::config`]) is a usage error whose message names the flag:
//!
//! * [`HumanDuration`]: `500ms`, `5s`, `2m`, printed as given;
//! * [`Topic`], [`Channel`]: valid NSQ names;
//! * the addresses of [`crate::addr`];
//! * rules for plain types, named in the field's `value_parser`: [`at_least_one`],
//!   [`non_empty`].
//!
//! ```
//! use suite_common::setting::{HumanDuration, Invalid, Topic};
//!
//! let d: HumanDuration = "1500ms".parse()?;
//! assert_eq!((d.get().as_millis(), d.to_string()), (1500, "1500ms".to_owned()));
//! let err = "a b".parse::<Topic>().unwrap_err();
//! assert_eq!(
//!     err.message("--topic", "a b"),
//!     "invalid `--topic`: 'a b' is not a valid NSQ topic name (1-64 characters of [.a-zA-Z0-9_-])"
//! );
//! # Ok::<(), Invalid>(())
//! ```

use std::{ffi::OsStr, fmt, str::FromStr, time::Duration};

use clap::{Arg, Command};

/// Why a setting's text is not a valid value; [`Parse`] turns it into a message naming the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// An address: "`--flag` 'value' <reason>".
    #[error("{0}")]
    Address(String),
    /// Any other value: "invalid `--flag`: <message>".
    #[error("{0}")]
    Value(String),
}

impl Invalid {
    /// What is wrong, without the flag.
    pub fn reason(&self) -> &str {
        match self {
            Self::Address(s) | Self::Value(s) => s,
        }
    }

    /// The message for the flag `flag` given `text`.
    pub fn message(&self, flag: &str, text: &str) -> String {
        match self {
            Self::Address(reason) => format!("`{flag}` '{text}' {reason}"),
            Self::Value(message) => format!("invalid `{flag}`: {message}"),
        }
    }
}

/// A clap value parser from a function whose error is an [`Invalid`]: its message names the
/// flag, and clap makes it a usage error (exit code 2).
///
/// Types that parse this way ([`HumanDuration`], [`Topic`], [`crate::addr::HostPort`], ...)
/// are clap's default for fields of their type; a field with an extra rule names the function,
/// e.g. `#[arg(long, value_parser = Parse(at_least_one::<u32>))]`.
pub struct Parse<T>(pub fn(&str) -> Result<T, Invalid>);

impl<T> Clone for Parse<T> {
    fn clone(&self) -> Self {
        Self(self.0)
    }
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Parse<T> {
    type Value = T;

    fn parse_ref(
        &self,
        command: &Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let flag = arg
            .and_then(Arg::get_long)
            .map_or_else(|| "value".to_owned(), |long| format!("--{long}"));
        let text = value.to_string_lossy();
        let error = |message: String| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message + "\n")
                .with_cmd(command)
        };
        let Some(utf8) = value.to_str() else {
            return Err(error(format!("invalid `{flag}`: '{text}' is not UTF-8")));
        };
        (self.0)(utf8).map_err(|e| error(e.message(&flag, &text)))
    }
}

/// Implements `Serialize` (as the `Display` text) and clap's `ValueParserFactory` (with
/// [`Parse`] and `FromStr`) for setting types whose `FromStr` error is [`Invalid`].
#[macro_export]
#[doc(hidden)]
macro_rules! setting_type {
    ($($ty:ty),* $(,)?) => {$(
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl ::clap::builder::ValueParserFactory for $ty {
            type Parser = $crate::setting::Parse<$ty>;
            fn value_parser() -> Self::Parser {
                $crate::setting::Parse(<$ty as ::std::str::FromStr>::from_str)
            }
        }
    )*};
}
pub use setting_type;

/// A duration written like `500ms`, `5s` or `2m` (humantime); printed as it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanDuration {
    /// The duration.
    value: Duration,
    /// The text it was parsed from (or the humantime form of `value`).
    text: String,
}

impl HumanDuration {
    /// A duration of `secs` seconds.
    pub fn from_secs(secs: u64) -> Self {
        Duration::from_secs(secs).into()
    }

    /// A duration of `ms` milliseconds.
    pub fn from_millis(ms: u64) -> Self {
        Duration::from_millis(ms).into()
    }

    /// The duration.
    pub fn get(&self) -> Duration {
        self.value
    }

    /// Parses a duration that must not be 0 (a period, a timeout).
    pub fn nonzero(text: &str) -> Result<Self, Invalid> {
        let parsed: Self = text.parse()?;
        if parsed.value.is_zero() {
            return Err(Invalid::Value("must not be 0".to_owned()));
        }
        Ok(parsed)
    }
}

impl From<Duration> for HumanDuration {
    fn from(value: Duration) -> Self {
        Self {
            value,
            text: humantime::format_duration(value).to_string(),
        }
    }
}

impl FromStr for HumanDuration {
    type Err = Invalid;

    fn from_str(text: &str) -> Result<Self, Invalid> {
        let trimmed = text.trim();
        humantime::parse_duration(trimmed)
            .map(|value| Self {
                value,
                text: trimmed.to_owned(),
            })
            .map_err(|e| {
                Invalid::Value(format!(
                    "'{text}' is not a duration such as 500ms, 5s or 2m ({e})"
                ))
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Defines a validated name type (a `String` inside) with `Deref<Target = str>`.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $valid:path, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl FromStr for $name {
            type Err = Invalid;

            fn from_str(text: &str) -> Result<Self, Invalid> {
                if $valid(text) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(Invalid::Value(format!(concat!("'{}' ", $what), text)))
                }
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        setting_type!($name);
    };
}

name_type!(
    /// A valid NSQ topic name (1-64 characters of `[.a-zA-Z0-9_-]`).
    Topic,
    nsq::is_valid_topic_name,
    "is not a valid NSQ topic name (1-64 characters of [.a-zA-Z0-9_-])"
);

name_type!(
    /// A valid NSQ channel name (as a topic, optionally ending in `#ephemeral`).
    Channel,
    nsq::is_valid_channel_name,
    "is not a valid NSQ channel name (1-64 characters of [.a-zA-Z0-9_-], optionally ending \
     in #ephemeral)"
);

setting_type!(HumanDuration);

/// Parses a whole number that must be at least 1.
pub fn at_least_one<T>(text: &str) -> Result<T, Invalid>
where
    T: FromStr + PartialEq + Default,
    T::Err: fmt::Display,
{
    let n: T = text
        .trim()
        .parse()
        .map_err(|e| Invalid::Value(format!("'{text}' is not a whole number ({e})")))?;
    if n == T::default() {
        return Err(Invalid::Value("must be at least 1".to_owned()));
    }
    Ok(n)
}

/// Parses a name that must not be empty (an instance id); surrounding spaces are dropped.
pub fn non_empty(text: &str) -> Result<String, Invalid> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Invalid::Value("must not be empty".to_owned()));
    }
    Ok(trimmed.to_owned())
}

/// Parses an id written into messages (`--sensor-id`, `--worker-id`): not empty
/// (trimmed), at most [`messages::MAX_ID_BYTES`] bytes, since readers reject longer ones.
pub fn message_id(text: &str) -> Result<String, Invalid> {
    let id = non_empty(text)?;
    if id.len() > messages::MAX_ID_BYTES {
        return Err(Invalid::Value(format!(
            "is {} bytes long; at most {} are accepted by the services that read it",
            id.len(),
            messages::MAX_ID_BYTES
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_bounded() {
        assert_eq!(message_id(" s1 ").unwrap(), "s1");
        assert!(message_id(&"x".repeat(256)).is_ok());
        let Err(Invalid::Value(why)) = message_id(&"x".repeat(257)) else {
            panic!("257 bytes accepted");
        };
        assert!(why.contains("257 bytes"), "{why}");
    }

    #[test]
    fn durations_print_as_given() {
        let d: HumanDuration = " 1500ms ".parse().unwrap();
        assert_eq!(
            (d.get(), d.to_string()),
            (Duration::from_millis(1500), "1500ms".to_owned())
        );
        assert_eq!(HumanDuration::from_secs(5).to_string(), "5s");
        assert!(HumanDuration::nonzero("0ms").is_err());
        assert!("soon".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!("sensor_data".parse::<Topic>().is_ok());
        assert!("a b".parse::<Topic>().is_err());
        assert!("logger#ephemeral".parse::<Channel>().is_ok());
        assert!("a/b".parse::<Channel>().is_err());
    }
}
