//! The admin bearer token, compared in constant time.

use subtle::ConstantTimeEq;

pub struct Token(Vec<u8>);

impl Token {
    /// From `--token-file` (trimmed) or, failing that, `ISOGROUP_TOKEN`.
    /// An empty token is no token: the admin API stays off.
    pub fn load(file: Option<&std::path::Path>, env: Option<String>) -> std::io::Result<Option<Token>> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path)?,
            None => env.unwrap_or_default(),
        };
        let text = text.trim();
        Ok((!text.is_empty()).then(|| Token(text.as_bytes().to_vec())))
    }

    pub fn matches(&self, presented: &[u8]) -> bool {
        // ct_eq of unequal lengths is false at once; the length is no secret worth hiding.
        bool::from(self.0.ct_eq(presented))
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn tokens() {
        let t = Token::load(None, Some(" s3cret\n".into())).unwrap().unwrap();
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret "));
        assert!(!t.matches(b""));
        assert!(Token::load(None, Some("  ".into())).unwrap().is_none());
        assert!(Token::load(None, None).unwrap().is_none());
    }
}
