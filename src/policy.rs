//! Authorization policies: named sets of rules on the user's claims (`--policy NAME=RULE,…`),
//! which routes require (`policy=NAME`, YARP `AuthorizationPolicy`) and `/api/user` reports.
//!
//! A policy holds when every one of its rules holds:
//! - `CLAIM:VALUE[|VALUE…]`: the claim equals one of the values, or is an array holding one;
//! - `CLAIM`: the claim is present and neither `false` nor `null`;
//! - `acr:VALUE[|VALUE…]`: the authentication context class (`acr`) is one of the values;
//! - `email-domain:DOMAIN[|DOMAIN…]`: the `email` claim is at one of the domains (case
//!   ignored) and not marked unverified (`email_verified: false`);
//! - `auth-age:DURATION`: the user signed in (`auth_time`) within the duration;
//! - `scope:SCOPE[|SCOPE…]`: the session's access token was granted one of the scopes.
//!
//! A claim name may be a URL (`https://example.com/roles:admin`): the name ends at the first
//! `:` after the scheme's `://`.
//!
//! When a policy fails only on `acr` or `auth-age` rules, signing in again can satisfy it: the
//! verdict is a step-up (RFC 9470) that names the `acr_values` and `max_age` to ask for.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Claims of the signed-in user (the ID token's, with UserInfo's over them).
pub type Claims = Map<String, Value>;

/// What a policy judges: the signed-in user's claims and the scope granted to the session's
/// access token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Principal {
    /// The user's claims.
    pub claims: Claims,
    /// The granted scope, space-separated; `None` when unknown (`scope:` rules then fail).
    pub scope: Option<String>,
}

impl Principal {
    fn has_scope(&self, scope: &str) -> bool {
        scope_granted(self.scope.as_deref(), scope)
    }
}

/// Whether `scope` is one of the space-separated `granted` scopes (none known: no).
pub fn scope_granted(granted: Option<&str>, scope: &str) -> bool {
    granted.is_some_and(|granted| granted.split_ascii_whitespace().any(|s| s == scope))
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// The claim equals one of the values, or is an array holding one.
    Claim { name: String, values: Vec<String> },
    /// The claim is present and neither `false` nor `null`.
    Present { name: String },
    /// `acr` is one of the values.
    Acr(Vec<String>),
    /// `email` is at one of the domains (lowercase) and not unverified.
    EmailDomain(Vec<String>),
    /// `auth_time` is at most this many seconds ago.
    AuthAge(u64),
    /// The access token was granted one of the scopes.
    Scope(Vec<String>),
}

impl Rule {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty rule".into());
        }
        // The claim name ends at the first `:` that is not a URL scheme's `://`.
        let after_scheme = text.find("://").map_or(0, |at| at + 3);
        let (name, value) = match text[after_scheme..].find(':') {
            Some(at) => {
                let at = after_scheme + at;
                (&text[..at], Some(&text[at + 1..]))
            }
            None => (text, None),
        };
        if name.is_empty()
            || name
                .chars()
                .any(|c| c.is_whitespace() || c == '|' || c == '=')
        {
            return Err(format!(
                "{text:?}: the claim name is missing or holds a space, | or ="
            ));
        }
        let alternatives = |value: &str| -> Result<Vec<String>, String> {
            let values: Vec<String> = value.split('|').map(|v| v.trim().to_owned()).collect();
            if values.iter().any(String::is_empty) {
                return Err(format!("{text:?}: an empty value"));
            }
            Ok(values)
        };
        Ok(match (name, value) {
            (_, None) => Rule::Present {
                name: name.to_owned(),
            },
            ("acr", Some(value)) => {
                let values = alternatives(value)?;
                // `/login?acr_values=` and a step-up carry these space-separated (OpenID
                // Connect Core §3.1.2.1): a space would make one value two.
                if let Some(bad) = values
                    .iter()
                    .find(|acr| acr.chars().any(|c| c.is_whitespace() || c.is_control()))
                {
                    return Err(format!(
                        "{text:?}: {bad:?} cannot be an acr value (acr_values is \
                         space-separated: no spaces or control characters)"
                    ));
                }
                Rule::Acr(values)
            }
            ("email-domain", Some(value)) => Rule::EmailDomain(
                alternatives(value)?
                    .into_iter()
                    .map(|domain| domain.to_ascii_lowercase())
                    .collect(),
            ),
            ("auth-age", Some(value)) => {
                let age = crate::units::parse_duration(value)
                    .map_err(|error| format!("{text:?}: {error}"))?;
                if age.is_zero() {
                    return Err(format!("{text:?}: the age must be more than zero"));
                }
                Rule::AuthAge(age.as_secs().max(1))
            }
            ("scope", Some(value)) => {
                let scopes = alternatives(value)?;
                for scope in &scopes {
                    check_scope(scope).map_err(|problem| format!("{text:?}: {problem}"))?;
                }
                Rule::Scope(scopes)
            }
            (_, Some(value)) => Rule::Claim {
                name: name.to_owned(),
                values: alternatives(value)?,
            },
        })
    }

    /// Whether the rule holds for `principal` at `now` (Unix seconds).
    fn holds(&self, principal: &Principal, now: u64) -> bool {
        let claims = &principal.claims;
        match self {
            Rule::Claim { name, values } => match claims.get(name) {
                Some(Value::Array(items)) => items.iter().any(|item| equals_any(item, values)),
                Some(value) => equals_any(value, values),
                None => false,
            },
            Rule::Present { name } => !matches!(
                claims.get(name),
                None | Some(Value::Null | Value::Bool(false))
            ),
            Rule::Acr(values) => claims
                .get("acr")
                .and_then(Value::as_str)
                .is_some_and(|acr| values.iter().any(|value| value == acr)),
            Rule::EmailDomain(domains) => {
                let unverified = claims.get("email_verified") == Some(&Value::Bool(false));
                let domain = claims
                    .get("email")
                    .and_then(Value::as_str)
                    .and_then(|email| email.rsplit_once('@'))
                    .map(|(_, domain)| domain.to_ascii_lowercase());
                !unverified && domain.is_some_and(|domain| domains.contains(&domain))
            }
            Rule::AuthAge(seconds) => claims
                .get("auth_time")
                .and_then(Value::as_u64)
                .is_some_and(|auth_time| now <= auth_time.saturating_add(*seconds)),
            Rule::Scope(scopes) => scopes.iter().any(|scope| principal.has_scope(scope)),
        }
    }

    /// Whether signing in again (with `acr_values` or `max_age`) can make the rule hold.
    fn is_step_up(&self) -> bool {
        matches!(self, Rule::Acr(_) | Rule::AuthAge(_))
    }
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`. The one check of a scope,
/// and its one message, for `scope:` rules, `--scopes` and the client token's scopes.
pub fn check_scope(scope: &str) -> Result<(), String> {
    let valid = !scope.is_empty()
        && scope
            .bytes()
            .all(|byte| matches!(byte, 0x21 | 0x23..=0x5b | 0x5d..=0x7e));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{scope:?} is not a scope (RFC 6749 §3.3: printable ASCII without spaces, quotes \
             or backslashes)"
        ))
    }
}

/// A string claim equals one of `values`; a number or a boolean is compared in its JSON form.
fn equals_any(claim: &Value, values: &[String]) -> bool {
    match claim {
        Value::String(text) => values.iter().any(|value| value == text),
        Value::Number(_) | Value::Bool(_) => {
            let text = claim.to_string();
            values.contains(&text)
        }
        _ => false,
    }
}

/// A named policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    name: String,
    rules: Vec<Rule>,
}

/// What a policy says about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every rule holds.
    Allowed,
    /// A rule that signing in again cannot change fails.
    Denied,
    /// Only `acr` or `auth-age` rules fail: signing in again with these can satisfy them.
    StepUp(StepUp),
}

/// The parameters of a new sign-in that can satisfy a policy (RFC 9470).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// The `acr` values that would do, space-separated; `None` when no `acr` rule failed.
    pub acr_values: Option<String>,
    /// The longest time since sign-in that would do, in seconds; `None` when no
    /// `auth-age` rule failed.
    pub max_age: Option<u64>,
}

impl Policy {
    /// Parses `NAME=RULE[,RULE…]` (the `--policy` flag).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, rules) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} must look like NAME=RULE[,RULE…]"))?;
        let rules: Vec<&str> = rules.split(',').collect();
        Self::from_rules(name, &rules)
    }

    /// A policy named `name` from its rules (a YARP file's `oidc-bff.Policies`).
    pub fn from_rules(name: &str, rules: &[&str]) -> Result<Self, String> {
        let name = name.trim();
        if !valid_name(name) {
            return Err(format!(
                "{name:?}: a policy name is letters, digits, '-', '_' or '.'"
            ));
        }
        if name.eq_ignore_ascii_case("anonymous") || name.eq_ignore_ascii_case("default") {
            return Err(format!("{name:?} is reserved (YARP's own policy names)"));
        }
        let rules = rules
            .iter()
            .map(|rule| Rule::parse(rule))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("policy {name}: {error}"))?;
        if rules.is_empty() {
            return Err(format!("policy {name}: no rule"));
        }
        Ok(Self {
            name: name.to_owned(),
            rules,
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the policy says about `principal` at `now` (Unix seconds).
    pub fn check(&self, principal: &Principal, now: u64) -> Verdict {
        let mut step_up = StepUp {
            acr_values: None,
            max_age: None,
        };
        let mut failed = false;
        for rule in &self.rules {
            if rule.holds(principal, now) {
                continue;
            }
            if !rule.is_step_up() {
                return Verdict::Denied;
            }
            failed = true;
            match rule {
                Rule::Acr(values) => {
                    // Two failing acr rules: a value both accept would do; asking for the
                    // first rule's values is what a provider can act on.
                    step_up.acr_values.get_or_insert_with(|| values.join(" "));
                }
                Rule::AuthAge(seconds) => {
                    step_up.max_age =
                        Some(step_up.max_age.map_or(*seconds, |age| age.min(*seconds)));
                }
                _ => {}
            }
        }
        if failed {
            Verdict::StepUp(step_up)
        } else {
            Verdict::Allowed
        }
    }

    /// The `acr` values the policy's rules accept.
    pub fn acr_values(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|rule| match rule {
                Rule::Acr(values) => values.as_slice(),
                _ => &[],
            })
            .map(String::as_str)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Every configured policy, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies(BTreeMap<String, Policy>);

impl Policies {
    /// Every policy, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.0.values()
    }

    /// The set of `policies`; a name given twice is an error.
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Result<Self, String> {
        let mut by_name = BTreeMap::new();
        for policy in policies {
            let name = policy.name.clone();
            if by_name.insert(name.clone(), policy).is_some() {
                return Err(format!("policy {name} is defined twice"));
            }
        }
        Ok(Self(by_name))
    }

    /// The policy named `name`.
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.0.get(name)
    }

    /// Whether there is no policy.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names of the policies `principal` satisfies at `now`.
    pub fn satisfied(&self, principal: &Principal, now: u64) -> Vec<&str> {
        self.0
            .values()
            .filter(|policy| policy.check(principal, now) == Verdict::Allowed)
            .map(Policy::name)
            .collect()
    }

    /// Every `acr` value some policy accepts (what `/login?acr_values=` may ask for).
    pub fn acr_values(&self) -> impl Iterator<Item = &str> {
        self.0.values().flat_map(Policy::acr_values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(text).expect("policy")
    }

    fn claims(json: &str) -> Principal {
        Principal {
            claims: serde_json::from_str(json).expect("claims"),
            scope: None,
        }
    }

    #[test]
    fn claim_rules_match_values_arrays_and_alternatives() {
        let admins = policy("admins=groups:admin|owner");
        assert_eq!(
            admins.check(&claims(r#"{"groups":["staff","owner"]}"#), 0),
            Verdict::Allowed
        );
        assert_eq!(
            admins.check(&claims(r#"{"groups":"admin"}"#), 0),
            Verdict::Allowed
        );
        assert_eq!(
            admins.check(&claims(r#"{"groups":["staff"]}"#), 0),
            Verdict::Denied
        );
        assert_eq!(
            admins.check(&claims(r#"{"groups":"administrators"}"#), 0),
            Verdict::Denied
        );
        assert_eq!(admins.check(&claims("{}"), 0), Verdict::Denied);
        // Objects never match, even when their text would.
        assert_eq!(
            admins.check(&claims(r#"{"groups":{"admin":true}}"#), 0),
            Verdict::Denied
        );
        let level = policy("level=level:3");
        assert_eq!(level.check(&claims(r#"{"level":3}"#), 0), Verdict::Allowed);
        assert_eq!(
            level.check(&claims(r#"{"level":"3"}"#), 0),
            Verdict::Allowed
        );
    }

    #[test]
    fn every_rule_must_hold() {
        let both = policy("both=groups:admin,email_verified");
        assert_eq!(
            both.check(&claims(r#"{"groups":["admin"],"email_verified":true}"#), 0),
            Verdict::Allowed
        );
        assert_eq!(
            both.check(&claims(r#"{"groups":["admin"],"email_verified":false}"#), 0),
            Verdict::Denied
        );
        assert_eq!(
            both.check(&claims(r#"{"groups":["admin"]}"#), 0),
            Verdict::Denied
        );
        assert_eq!(
            both.check(&claims(r#"{"groups":["admin"],"email_verified":null}"#), 0),
            Verdict::Denied
        );
    }

    #[test]
    fn email_domains_ignore_case_and_refuse_unverified_addresses() {
        let staff = policy("staff=email-domain:Example.com|example.org");
        let check = |json: &str| staff.check(&claims(json), 0);
        assert_eq!(check(r#"{"email":"ann@EXAMPLE.com"}"#), Verdict::Allowed);
        assert_eq!(
            check(r#"{"email":"ann@example.org","email_verified":true}"#),
            Verdict::Allowed
        );
        assert_eq!(
            check(r#"{"email":"ann@example.com","email_verified":false}"#),
            Verdict::Denied
        );
        // The domain is what follows the last @, whole.
        assert_eq!(
            check(r#"{"email":"ann@example.com@evil.test"}"#),
            Verdict::Denied
        );
        assert_eq!(check(r#"{"email":"ann@sub.example.com"}"#), Verdict::Denied);
        assert_eq!(check(r#"{"email":"ann@notexample.com"}"#), Verdict::Denied);
        assert_eq!(check(r#"{}"#), Verdict::Denied);
    }

    #[test]
    fn acr_and_auth_age_failures_ask_for_a_step_up() {
        let strong = policy("strong=groups:admin,acr:gold|silver,auth-age:300s");
        let admin = |extra: &str| claims(&format!(r#"{{"groups":["admin"]{extra}}}"#));
        assert_eq!(
            strong.check(&admin(r#","acr":"gold","auth_time":1000"#), 1_300),
            Verdict::Allowed
        );
        assert_eq!(
            strong.check(&admin(r#","acr":"bronze","auth_time":1000"#), 1_301),
            Verdict::StepUp(StepUp {
                acr_values: Some("gold silver".into()),
                max_age: Some(300),
            })
        );
        assert_eq!(
            strong.check(&admin(r#","acr":"gold""#), 1_000),
            Verdict::StepUp(StepUp {
                acr_values: None,
                max_age: Some(300),
            }),
            "no auth_time: a new sign-in with max_age brings one"
        );
        // A rule a new sign-in cannot change fails the whole policy outright.
        assert_eq!(
            strong.check(&claims(r#"{"acr":"bronze","groups":["staff"]}"#), 0),
            Verdict::Denied
        );
    }

    #[test]
    fn scope_rules_read_the_granted_scope_not_the_claims() {
        let orders = policy("orders=scope:orders.read|orders.admin");
        let with_scope = |scope: Option<&str>| Principal {
            claims: claims(r#"{"scope":"orders.read"}"#).claims,
            scope: scope.map(str::to_owned),
        };
        assert_eq!(
            orders.check(&with_scope(Some("openid orders.read")), 0),
            Verdict::Allowed
        );
        assert_eq!(
            orders.check(&with_scope(Some("orders.admin")), 0),
            Verdict::Allowed
        );
        // Whole scopes only, and a `scope` claim in the ID token counts for nothing.
        assert_eq!(
            orders.check(&with_scope(Some("openid orders.readonly")), 0),
            Verdict::Denied
        );
        assert_eq!(orders.check(&with_scope(None), 0), Verdict::Denied);
        assert_eq!(orders.check(&with_scope(Some("")), 0), Verdict::Denied);
    }

    #[test]
    fn claim_names_may_be_urls() {
        let roles = policy("roles=https://example.com/roles:admin");
        assert_eq!(
            roles.check(&claims(r#"{"https://example.com/roles":["admin"]}"#), 0),
            Verdict::Allowed
        );
        let present = policy("p=https://example.com/flag");
        assert_eq!(
            present.check(&claims(r#"{"https://example.com/flag":1}"#), 0),
            Verdict::Allowed
        );
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        for (text, reason) in [
            ("admins", "NAME=RULE"),
            ("=groups:admin", "policy name"),
            ("a b=groups:admin", "policy name"),
            ("anonymous=groups:admin", "reserved"),
            ("admins=", "empty rule"),
            ("admins=groups:", "empty value"),
            ("admins=groups:a||b", "empty value"),
            ("admins=groups:admin,", "empty rule"),
            ("fresh=auth-age:soon", "not a duration"),
            ("fresh=auth-age:0s", "more than zero"),
            ("s=scope:", "empty value"),
            ("s=scope:a\"b", "not a scope"),
            ("s=scope:a\\b", "not a scope"),
            ("strong=acr:gold level", "acr value"),
            ("strong=acr:gold|\u{8}silver", "acr value"),
            ("strong=acr:gold|sil\u{7f}ver", "acr value"),
        ] {
            let error = Policy::parse(text).expect_err(text);
            assert!(error.contains(reason), "{text}: {error}");
        }
        let twice = Policies::new([policy("a=x"), policy("a=y")]).expect_err("twice");
        assert!(twice.contains("twice"), "{twice}");
    }

    #[test]
    fn the_set_reports_what_a_user_satisfies_and_which_acr_values_exist() {
        let set = Policies::new([
            policy("admins=groups:admin"),
            policy("staff=email-domain:example.com"),
            policy("strong=acr:gold"),
        ])
        .expect("set");
        let user = claims(r#"{"groups":["admin"],"email":"a@other.test"}"#);
        assert_eq!(set.satisfied(&user, 0), ["admins"]);
        assert_eq!(set.acr_values().collect::<Vec<_>>(), ["gold"]);
    }
}
