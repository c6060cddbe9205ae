//! The sign-in parameters `/login` passes on to the provider (`--login-params`), and the check
//! each value must pass first: the SPA asks for a fresh or stronger sign-in (step-up, RFC 9470)
//! or pre-fills the account, never anything else of the authorization request.

use std::collections::BTreeSet;

/// A parameter `/login` may pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoginParam {
    /// `prompt`: `none`, `login`, `consent`, `select_account` (space-separated; `none` alone).
    Prompt,
    /// `login_hint`: at most 256 printable characters.
    LoginHint,
    /// `acr_values`: values some policy's `acr:` rule names.
    AcrValues,
    /// `max_age`: whole seconds.
    MaxAge,
}

impl LoginParam {
    /// Every parameter, by its name in the query.
    pub const ALL: [LoginParam; 4] = [
        LoginParam::Prompt,
        LoginParam::LoginHint,
        LoginParam::AcrValues,
        LoginParam::MaxAge,
    ];

    /// The name in the query and in the authorization request.
    pub fn name(self) -> &'static str {
        match self {
            LoginParam::Prompt => "prompt",
            LoginParam::LoginHint => "login_hint",
            LoginParam::AcrValues => "acr_values",
            LoginParam::MaxAge => "max_age",
        }
    }

    fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|param| param.name() == name)
    }

    /// Checks a value; `acr_values` must each be one of `known_acr`.
    fn check(self, value: &str, known_acr: &[&str]) -> Result<(), String> {
        let ok = match self {
            LoginParam::Prompt => {
                let values: Vec<&str> = value.split(' ').collect();
                values
                    .iter()
                    .all(|value| matches!(*value, "none" | "login" | "consent" | "select_account"))
                    && (values.len() == 1 || !values.contains(&"none"))
            }
            LoginParam::LoginHint => {
                !value.is_empty()
                    && value.chars().count() <= 256
                    && !value.chars().any(char::is_control)
            }
            LoginParam::AcrValues => {
                !value.is_empty() && value.split(' ').all(|acr| known_acr.contains(&acr))
            }
            LoginParam::MaxAge => {
                !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit())
            }
        };
        if ok {
            Ok(())
        } else {
            Err(match self {
                LoginParam::Prompt => {
                    "prompt must be none, login, consent or select_account".to_owned()
                }
                LoginParam::LoginHint => {
                    "login_hint must be 1 to 256 printable characters".to_owned()
                }
                LoginParam::AcrValues => {
                    "acr_values may only name values a policy's acr: rule accepts".to_owned()
                }
                LoginParam::MaxAge => "max_age must be a whole number of seconds".to_owned(),
            })
        }
    }
}

/// The parameters `/login` passes on (`--login-params`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginParams(BTreeSet<LoginParam>);

impl Default for LoginParams {
    fn default() -> Self {
        Self(LoginParam::ALL.into_iter().collect())
    }
}

impl LoginParams {
    /// Parses the flag: names separated by commas, or `none`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim() == "none" {
            return Ok(Self(BTreeSet::new()));
        }
        text.split(',')
            .map(|name| {
                LoginParam::by_name(name.trim()).ok_or_else(|| {
                    format!(
                        "{name:?} is not one of prompt, login_hint, acr_values, max_age (or none)"
                    )
                })
            })
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }

    /// The parameters of a `/login` query (`returnUrl` aside) to pass on, each checked; a
    /// parameter not passed on, a bad value or a repeated name is an error that says which.
    pub fn select(
        &self,
        query: &[(String, String)],
        known_acr: &[&str],
    ) -> Result<Vec<(&'static str, String)>, String> {
        let mut chosen: Vec<(&'static str, String)> = Vec::new();
        for (name, value) in query {
            if name == "returnUrl" {
                continue;
            }
            let param = LoginParam::by_name(name)
                .filter(|param| self.0.contains(param))
                .ok_or_else(|| format!("/login does not take {name:?}"))?;
            if chosen.iter().any(|(known, _)| *known == param.name()) {
                return Err(format!("{name} given twice"));
            }
            param.check(value, known_acr)?;
            chosen.push((param.name(), value.clone()));
        }
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn checked_parameters_pass_on() {
        let params = LoginParams::default();
        let chosen = params
            .select(
                &query(&[
                    ("returnUrl", "/orders"),
                    ("prompt", "login consent"),
                    ("max_age", "300"),
                    ("acr_values", "gold silver"),
                    ("login_hint", "alice@example.com"),
                ]),
                &["gold", "silver"],
            )
            .expect("chosen");
        assert_eq!(
            chosen.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            ["prompt", "max_age", "acr_values", "login_hint"]
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let params = LoginParams::default();
        for (pair, reason) in [
            (("prompt", "none login"), "prompt"),
            (("prompt", "evil"), "prompt"),
            (("max_age", "5m"), "max_age"),
            (("max_age", ""), "max_age"),
            (("acr_values", "platinum"), "acr_values"),
            (("acr_values", "gold platinum"), "acr_values"),
            (("login_hint", "a\r\nb"), "login_hint"),
            (("redirect_uri", "https://evil.example"), "does not take"),
            (("scope", "openid admin"), "does not take"),
        ] {
            let error = params.select(&query(&[pair]), &["gold"]).expect_err(pair.0);
            assert!(error.contains(reason), "{pair:?}: {error}");
        }
        let long = "a".repeat(257);
        assert!(
            params
                .select(&query(&[("login_hint", &long)]), &[])
                .is_err()
        );
        let twice = params
            .select(&query(&[("max_age", "1"), ("max_age", "2")]), &[])
            .expect_err("twice");
        assert!(twice.contains("twice"), "{twice}");
        // Only what the flag names passes.
        let prompt_only = LoginParams::parse("prompt").expect("flag");
        assert!(
            prompt_only
                .select(&query(&[("max_age", "1")]), &[])
                .is_err()
        );
        assert!(
            LoginParams::parse("none")
                .expect("none")
                .select(&query(&[("prompt", "login")]), &[])
                .is_err()
        );
        assert!(LoginParams::parse("prompt,claims").is_err());
    }
}
