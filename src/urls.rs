//! Absolute URLs typed by an operator (flags, YARP files), parsed with errors in plain words:
//! the `url` crate's "relative URL without a base" tells nobody what to write instead.

use url::{ParseError, Url};

/// Parses `text` as an absolute URL; the error says what is wrong and shows the form expected.
pub(crate) fn absolute(text: &str) -> Result<Url, String> {
    Url::parse(text).map_err(|error| {
        let why = match error {
            ParseError::RelativeUrlWithoutBase => "is not an absolute URL",
            ParseError::EmptyHost => "has no host",
            ParseError::InvalidPort => "has a port that is not a number from 0 to 65535",
            ParseError::InvalidIpv4Address | ParseError::InvalidIpv6Address => {
                "has a malformed IP address"
            }
            ParseError::InvalidDomainCharacter | ParseError::IdnaError => {
                "has a character a host name cannot have"
            }
            _ => "is not a URL",
        };
        format!("{text:?} {why}; write it as https://host[:port][/path] (or http://)")
    })
}

/// Whether a URL's host is a loopback address or `localhost`.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_write() {
        let error = absolute("notaurl").expect_err("relative");
        assert_eq!(
            error,
            "\"notaurl\" is not an absolute URL; write it as https://host[:port][/path] (or http://)"
        );
        assert!(!error.contains("base"));
        assert!(
            absolute("http://h:99999")
                .expect_err("port")
                .contains("port")
        );
        assert!(absolute("http://").expect_err("host").contains("no host"));
        assert_eq!(
            absolute("https://api.example.com:8443/v1")
                .expect("url")
                .port(),
            Some(8443)
        );
    }
}
