//! Errors said for people, on one line: an error with its sources, and what a file system
//! error means to the operator who named the path (a plain sentence without the OS's error
//! number, for messages that already name the flag and the path).

use std::io;

/// `error`, said for a path the operator chose.
pub fn io_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "does not exist".to_owned(),
        io::ErrorKind::PermissionDenied => {
            "permission denied to the gateway's user (give it the path, or under systemd leave \
             the default: StateDirectory= makes one it owns)"
                .to_owned()
        }
        io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory => {
            "a file is in the way: a directory is needed here".to_owned()
        }
        io::ErrorKind::IsADirectory => "a directory, not a file".to_owned(),
        io::ErrorKind::ReadOnlyFilesystem => "on a read-only file system".to_owned(),
        io::ErrorKind::StorageFull => "no space left on the device".to_owned(),
        _ => {
            // The OS's words, without the "(os error N)" that follows them.
            let text = error.to_string();
            match text.find(" (os error") {
                Some(end) => text[..end].to_owned(),
                None => text,
            }
        }
    }
}

/// Renders an error and its sources on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // rustls's name for a certificate chain that leads to no trusted root: say what fixes it.
    if text.contains("UnknownIssuer") {
        text.push_str(
            " (the server's certificate is not signed by a CA this host trusts: name that CA's \
             PEM file with --ca-file)",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_plain_words_without_error_numbers() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").expect("write");
        let in_the_way = std::fs::create_dir_all(&file).expect_err("a file");
        assert_eq!(
            io_reason(&in_the_way),
            "a file is in the way: a directory is needed here"
        );
        let under_a_file = std::fs::create_dir_all(file.join("sub")).expect_err("under a file");
        assert_eq!(
            io_reason(&under_a_file),
            "a file is in the way: a directory is needed here"
        );
        let absent = std::fs::read(dir.path().join("absent")).expect_err("absent");
        assert_eq!(io_reason(&absent), "does not exist");
        let other = io::Error::from_raw_os_error(libc_eio());
        assert!(
            !io_reason(&other).contains("os error"),
            "{}",
            io_reason(&other)
        );
    }

    /// EIO on Linux.
    fn libc_eio() -> i32 {
        5
    }
}
