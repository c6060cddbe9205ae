//! The request-path normaliser and the route matcher: normalising is idempotent, its output
//! never holds a dot segment, an empty segment, `;`, a backslash or a double escape, and a
//! template match and a prefix removal on it never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oidc_bff::path::{normalize, strip_prefix_ignore_case};
use oidc_bff::proxy::Template;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize(path) else {
        return;
    };
    assert!(normal.starts_with('/'));
    assert_eq!(
        normalize(&normal).as_deref(),
        Ok(normal.as_ref()),
        "not idempotent: {path:?}"
    );
    let segments: Vec<&str> = normal[1..].split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        let last = index + 1 == segments.len();
        assert!(!segment.is_empty() || last, "empty segment in {normal:?}");
        assert!(*segment != "." && *segment != "..", "dot segment in {normal:?}");
    }
    assert!(!normal.contains(';') && !normal.contains('\\'), "{normal:?}");
    assert!(!normal.to_ascii_uppercase().contains("%2E"), "escaped dot left in {normal:?}");
    for template in ["/api/{**rest}", "/pub/admin/{**rest}", "/orders/{id:int}", "/{a}/{b?}"] {
        let template = Template::parse(template).expect("template");
        let _ = template.matches(&normal);
    }
    if let Some(rest) = strip_prefix_ignore_case(&normal, "/api") {
        assert!(rest.is_empty() || rest.starts_with('/'));
    }
});
