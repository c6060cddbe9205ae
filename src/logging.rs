//! Text log lines that outside text cannot forge: every field value (and the message) has its
//! control characters escaped before it is written.
//!
//! Attack stopped: log injection. Much of what the gateway logs comes from outside (a provider's
//! discovery document and error answers, an upstream's error text, a request's path). Written
//! raw, a value holding `\n` starts what looks like a log line of the attacker's choosing, and
//! one holding ESC sequences rewrites the terminal of whoever reads the log. tracing's own text
//! format escapes some ANSI characters in messages only, and no newlines; JSON logs are escaped
//! by JSON itself.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// The field formatter for text logs: `message key=value …`, every value escaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Escaping {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Escaping<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Escaping<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !self.first {
                self.writer.write_char(' ')?;
            }
            self.first = false;
            let name = field.name();
            if name != "message" {
                self.writer
                    .write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')?;
            }
            write_escaped(&mut self.writer, value)
        })();
    }
}

impl Visit for Escaping<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.write(field, &text);
    }
}

/// Writes `text` with every control character (C0, DEL, C1: newlines, carriage returns, ESC, …)
/// as a visible escape.
pub fn write_escaped(out: &mut impl Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() => write!(out, "\\u{{{:x}}}", u32::from(c))?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::sync::Locked;
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.locked().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn outside_text_cannot_start_a_line_or_reach_the_terminal() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(EscapedFields)
            .with_writer(move || writer.clone())
            .finish();
        let hostile = "https://evil.example\n2026-12-05 ERROR oidc_bff: forged\r\x1b[2J\u{9b}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(issuer = %hostile, reason = ?hostile, "discovery failed: {hostile}");
            tracing::error!(detail = hostile, "refresh failed");
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\r') && !text.contains('\x1b') && !text.contains('\u{9b}'));
        assert!(
            text.contains("issuer=https://evil.example\\n2026-12-05 ERROR"),
            "{text}"
        );
        assert!(text.contains("\\u{1b}[2J"), "{text}");
        assert!(
            text.lines()
                .all(|line| line.starts_with(" WARN") || line.starts_with("ERROR")),
            "{text}"
        );
    }
}
